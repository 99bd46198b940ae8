"""The ``onnx-alds`` command line: analyze, compress, plan, apply, validate, bench, sweep, distill, demo.

Exit codes: 0 done; 1 a user-facing error, printed as one ``error: …`` line; 2 bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

from . import __version__
from .argtypes import any_float, non_negative_int, positive_int, random_seed
from .errors import InputDataError, ModelLoadError, OnnxAldsError






def _add_analyze(subparsers) -> None:
    parser = subparsers.add_parser("analyze", help="list the layers that can be factorized, with sizes and spectra",
                                   description="Per-layer table: op, weight shape, params, MACs, candidate groups, "
                                               "relative spectral error at a few ranks; then the totals.")
    parser.add_argument("model", help="ONNX model file")
    parser.add_argument("--input-shape", action="append", metavar="NAME:DIMS",
                        help="concrete dims of a dynamic input, e.g. input:1x3x224x224 (repeat per input)")
    parser.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="PATTERN",
                        help="node or weight names, or glob patterns of them, to leave dense (a pattern that is a "
                             "name, such as layer[0], means that name)")
    parser.add_argument("--max-groups", type=positive_int, default=16, help="largest group count g to consider")
    parser.add_argument("--rank-multiple", type=positive_int, default=16, metavar="N",
                        help="count groups and the smallest reachable ratios as compress with this rank multiple would")
    parser.add_argument("--json", metavar="FILE", help="write the analysis as JSON")
    parser.set_defaults(run=_run_analyze)


def _add_compress(subparsers) -> None:
    parser = subparsers.add_parser("compress", help="factorize the model under a size, MAC or latency budget",
                                   description="Factorize Conv/Gemm/MatMul weights by grouped low-rank SVD with "
                                               "the ALDS min-max allocation under one global budget "
                                               "(onnx-alds plan, then onnx-alds apply).")
    _compress_arguments(parser, output_help="where to write the compressed model")
    from .distill import add_compress_distill_arguments

    add_compress_distill_arguments(parser)
    parser.set_defaults(run=_run_compress)


def _add_plan(subparsers) -> None:
    from .plan import run_plan_command

    parser = subparsers.add_parser("plan", help="write the per-layer decisions compress would apply, as JSON",
                                   description="Everything compress decides (per layer: dense or (groups, rank, "
                                               "order), predicted error and cost), written to -o as JSON to edit, "
                                               "keep or apply elsewhere with onnx-alds apply. Takes compress's flags.")
    _compress_arguments(parser, output_help="where to write the plan (JSON)")
    hidden = _validation_dests() | {"validate"}  # parsed (and refused, naming apply --validate), not offered
    for action in parser._actions:
        if action.dest in hidden:
            action.help = argparse.SUPPRESS
    # (argparse cannot wrap a usage line whose exclusive groups hold hidden flags: the short form, written out)
    parser.usage = ("%(prog)s MODEL -o PLAN.json (--keep-params F | --keep-flops F | --keep-latency F) "
                    "[the options of compress below; --validate and its options belong to onnx-alds apply]")
    parser.set_defaults(run=run_plan_command)


def _add_apply(subparsers) -> None:
    from .plan import add_apply_arguments, run_apply_command

    parser = subparsers.add_parser("apply", help="apply a plan (edited or not) to the model it was made for",
                                   description="Rewrite the model as the plan says, with data-aware factors when "
                                               "the plan is data-aware (give the calibration inputs again).")
    add_apply_arguments(parser)
    parser.set_defaults(run=run_apply_command)


def _compress_arguments(parser: argparse.ArgumentParser, *, output_help: str) -> None:
    """The flags of compress; plan takes the same ones."""
    from .api import METHODS
    from .options import ORDER_CHOICES
    from .spectra import ERROR_MEASURES

    parser.add_argument("model", help="ONNX model file (never modified)")
    parser.add_argument("-o", "--output", required=True, help=output_help)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--keep-params", type=any_float, metavar="F",
                        help="fraction of the model's weights to keep, in (0, 1]")
    target.add_argument("--keep-flops", type=any_float, metavar="F",
                        help="fraction of the Conv/Gemm/MatMul multiply-accumulates to keep, in (0, 1]")
    target.add_argument("--keep-latency", type=any_float, metavar="F",
                        help="fraction of the whole model's time to keep, in (0, 1], measured in ONNX Runtime on "
                             "--provider at --bench-batch with --threads (per-layer latency tables, cached; "
                             "docs/LATENCY.md)")
    parser.add_argument("--latency-rounds", type=non_negative_int, default=3, metavar="N",
                        help="with --keep-latency: at most N rounds of timing the whole compressed model against the "
                             "original and re-allocating until the measured ratio meets the budget (0: trust the "
                             "per-layer tables)")
    parser.add_argument("--method", choices=METHODS, default="alds",
                        help="allocation: alds (default), or a baseline: svd, svd-energy, l-rank; or damage (needs "
                             "calibration): least total measured output damage under the budget (docs/ACCURACY.md)")
    parser.add_argument("--error", choices=ERROR_MEASURES[:3], default=None, dest="error_measure",
                        help="layer error that alds balances (default: spectral, max_i sigma_{i,r+1}/sigma_1, "
                             "without calibration; frobenius, the relative RMS output error, with it)")
    parser.add_argument("--rank-multiple", type=positive_int, default=16, metavar="N",
                        help="round every rank to a multiple of N; the default 16 is what ONNX Runtime's fast CPU "
                             "kernels need (1 gives the finest steps, often slower than the original)")
    parser.add_argument("--order", choices=ORDER_CHOICES, default=ORDER_CHOICES[0],
                        help="factorized pair of a k×k stride-1 conv: spatial-first (default, ALDS: k×k then 1x1), "
                             "pointwise-first (1x1 then k×k; faster on CPU where channels are few) or auto (per "
                             "layer, the faster one by the latency tables on --provider at --bench-batch)")
    parser.add_argument("--max-groups", type=positive_int, default=16, metavar="G",
                        help="largest group count g that alds considers (default 16)")
    parser.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="PATTERN",
                        help="node or weight names, or glob patterns of them, to leave dense (a pattern that is a "
                             "name, such as layer[0], means that name)")
    parser.add_argument("--seed", type=random_seed, default=0, help="seed of the allocation's random starts")
    parser.add_argument("--report", metavar="FILE.json", help="write the per-layer plan and totals as JSON")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="leave out the per-layer table (totals, notes and warnings stay)")
    _add_calibration_arguments(parser)


def _add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    from .inputs import add_input_arguments

    add_input_arguments(parser, prefix="calibration-")
    parser.add_argument("--calibration-batch-size", type=positive_int, default=16, metavar="N",
                        help="batch size of the calibration runs")
    parser.add_argument("--calibration-workers", type=positive_int, default=1, metavar="N",
                        help="compute the calibration statistics' shards on N Ray actors (the [ray] extra; "
                             "same result as 1, which runs in this process)")
    parser.add_argument("--sequential", action="store_true",
                        help="fit each layer to the inputs of the already-compressed layers before it "
                             "(slower; helps on fragile models, see docs/DATA_AWARE.md)")
    parser.add_argument("--no-refit", dest="refit", action="store_false",
                        help="skip the least-squares decoder refit on the full input second moment")
    parser.add_argument("--no-shrinkage", dest="shrinkage", action="store_false",
                        help="use the measured input moments as they are, without the Ledoit-Wolf shrinkage "
                             "toward a scaled identity (which guards layers with few calibration vectors)")
    parser.add_argument("--bias-correction", action="store_true",
                        help="add each layer's mean output error on the calibration data to its bias")
    parser.add_argument("--speed-check", action="store_true",
                        help="with --keep-params/--keep-flops: drop every factorized option that the latency tables "
                             "(on --provider, at --bench-batch) measure not faster than the dense layer before "
                             "allocating (--keep-latency does this and budgets the time itself)")
    parser.add_argument("--sensitivity", action="store_true",
                        help="experimental: weight each layer's error by its measured effect on the output")
    parser.add_argument("--both-factors", type=non_negative_int, nargs="?", const=1, default=0, metavar="ROUNDS",
                        help="both-factor compensation: ROUNDS (default 1) of alternating least squares of encoder and "
                             "decoder on each layer's input statistics after the refit")
    parser.add_argument("--affine-correction", action="store_true",
                        help="match each compressed layer's per-output-channel mean and variance to the original's on "
                             "the calibration data (folded into the decoder; replaces --bias-correction's shift)")
    parser.add_argument("--damage-samples", type=positive_int, default=8, metavar="N",
                        help="--method damage: calibration inputs per probe run (default 8)")
    parser.add_argument("--damage-points", type=positive_int, default=4, metavar="N",
                        help="--method damage: ranks measured per layer and group count (default 4)")
    parser.add_argument("--damage-max-groups", type=positive_int, default=1, metavar="G",
                        help="--method damage: largest group count measured and offered (default 1)")
    parser.add_argument("--prune", nargs="?", const="combined", default="off", choices=("off", "combined", "only"),
                        help="also narrow the hidden width of prunable blocks (expand → depthwise → project, "
                             "MatMul → GELU → MatMul) with a least-squares refit, needs calibration; 'only': widths "
                             "alone, no low-rank (docs/PRUNING.md)")
    parser.add_argument("--prune-heads", action="store_true",
                        help="with --prune: blocks may also follow channels split into attention heads (attention's "
                             "V → output projection; every head keeps the same number of dims); off by default: "
                             "measured no better on all-MiniLM-L6-v2 (docs/PRUNING.md)")
    parser.add_argument("--validate", action="store_true",
                        help="after compressing, validate and benchmark against the original (validate options below)")
    from .validate import add_validation_arguments

    add_validation_arguments(parser)


def _run_analyze(args: argparse.Namespace) -> int:
    from .api import analyze
    from .model_io import check_output_path, parse_input_shapes
    from .report import write_json

    if args.json:
        check_output_path(Path(args.json), protect=[args.model], flag="--json")
    report = analyze(args.model, input_shapes=parse_input_shapes(args.input_shape), exclude=args.exclude,
                     max_groups=args.max_groups, rank_multiple=args.rank_multiple)
    args.written_files = []  # what an interrupt or a failed print from here on leaves written (_run names it)
    if args.json:  # files first: a closed pipe on stdout must not cost the user the JSON
        write_json(report.to_dict(), args.json, also=lambda: args.written_files.append(str(args.json)))
    print(report.format())
    return 0


def given_flags(args: argparse.Namespace) -> set[str]:
    """The destinations of the flags given on the command line (:func:`explicit_flags`, also when the value
    given is the default: ``--preprocess imagenet``), or with a value other than their default."""
    parser = getattr(args, "command_parser", None)
    if parser is None:
        return set()
    return set(getattr(args, "explicit_flags", ())) | {
        action.dest for action in parser._actions
        if action.dest not in ("help", "run", "command_parser") and hasattr(args, action.dest)
        and getattr(args, action.dest) != action.default}


def refuse_repeated_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """A one-value flag given twice with different values (``--keep-params 0.5 ... --keep-params 0.9``) is a
    usage error (exit 2): argparse keeps the last silently. So is a flag with an optional value or a list
    given twice (``--prune only --prune combined``, ``--batch 2 --batch 4``: its values go after one flag).
    Flags that collect values (``--exclude``, ``--input-shape``) may repeat."""
    single = {option: action for action in parser._actions if type(action).__name__ == "_StoreAction"
              and action.nargs is None for option in action.option_strings}
    several = {option: action for action in parser._actions if type(action).__name__ == "_StoreAction"
               and action.nargs is not None for option in action.option_strings}
    seen: set[argparse.Action] = set()
    every = [option for action in parser._actions for option in action.option_strings]
    given: dict[argparse.Action, tuple[str, str]] = {}
    tokens = list(argv)
    for index, token in enumerate(tokens):
        if token == "--":
            break
        option, equals, value = token.partition("=")
        if option.startswith("--") and option not in every:  # an abbreviation, as argparse resolves it
            matches = [known for known in every if known.startswith(option)]
            option = matches[0] if len(matches) == 1 else option
        elif not option.startswith("--") and len(token) > 2 and token[:2] in single:  # -oOUT
            option, equals, value = token[:2], "=", token[2:]
        if option in several:
            if several[option] in seen:
                values = " with all its values" if several[option].nargs in ("+", "*") else ""
                parser.error(f"{option} is given twice; give it once{values}")
            seen.add(several[option])
            continue
        action = single.get(option)
        if action is None or not option.startswith("-"):
            continue
        if not equals:
            value = tokens[index + 1] if index + 1 < len(tokens) else ""
        if action in given and given[action][1] != value:
            parser.error(f"{option} is given twice ({given[action][1]} and {value}); give it once")
        given[action] = (option, value)


def explicit_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations ``argv`` (a command's arguments) sets, found by parsing it again with every default
    suppressed: what is in the namespace then was given."""
    saved = [(action, action.default) for action in parser._actions]
    defaults, parser._defaults = parser._defaults, {}
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(list(argv))
    except SystemExit:  # (the first parse accepted it: not expected)
        return set()
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults = defaults
    return set(vars(namespace)) - {"help", "run", "command_parser"}


def _validation_dests() -> set[str]:
    """The destinations of the flags only ``--validate`` reads: its inputs and its tolerances."""
    from .validate import add_tolerance_arguments

    probe = argparse.ArgumentParser(add_help=False)
    add_tolerance_arguments(probe)
    return {action.dest for action in probe._actions} | {
        "validate_inputs", "validate_images", "validate_random", "validate_labels", "validate_labels_from_filenames"}


def check_flags_take_effect(args: argparse.Namespace, *, writes_model: bool = True) -> None:
    """A flag that would have no effect with the other flags given is an error, not silently ignored
    (e.g. ``--latency-rounds`` without ``--keep-latency``, ``--rtol`` without ``--validate``). Raises
    InputDataError naming both. ``writes_model=False`` (``plan``): validation flags belong to ``apply``."""
    from .options import seed_takes_effect

    given = given_flags(args)
    validating = bool(getattr(args, "validate", False))
    timing = validating or getattr(args, "keep_latency", None) is not None or getattr(args, "order", None) == "auto" \
        or bool(getattr(args, "speed_check", False))
    for dest in sorted(given & _validation_dests()):
        flag = "--" + dest.replace("_", "-")
        if not writes_model:
            raise InputDataError(f"{flag} has no effect in plan (it writes a plan, not a model); give it to "
                                 "onnx-alds apply --validate")
        if not validating:
            raise InputDataError(f"{flag} has no effect without --validate; add --validate or drop {flag}")
    timing_flags = (["--validate"] if writes_model else []) + (
        ["--keep-latency", "--order auto", "--speed-check"] if hasattr(args, "keep_latency") else [])  # apply: none
    for dest in sorted(given & {"provider", "bench_batch", "threads"}):
        flag = "--" + dest.replace("_", "-")
        if not timing:
            some = ", ".join(timing_flags[:-1]) + (" or " if len(timing_flags) > 1 else "") + timing_flags[-1]
            raise InputDataError(f"{flag} has no effect without {some}; add "
                                 f"{'one of them' if len(timing_flags) > 1 else 'it'} or drop {flag}")
    has_calibration = any(getattr(args, dest, None) for dest in
                          ("calibration", "calibration_images", "calibration_random"))
    def needs(dest: str, flag: str, effective: bool, missing: str) -> tuple[str, bool, str]:
        return dest, effective, f"{flag} has no effect without {missing}; add {missing.split(' (')[0]} or drop {flag}"

    method = getattr(args, "method", None)
    pruned_only = getattr(args, "prune", "off") == "only"
    rules = [
        needs("latency_rounds", "--latency-rounds", getattr(args, "keep_latency", None) is not None, "--keep-latency F"),
        needs("calibration_workers", "--calibration-workers", has_calibration, "calibration inputs (--calibration ...)"),
        needs("calibration_batch_size", "--calibration-batch-size", has_calibration,
              "calibration inputs (--calibration ...)"),
        needs("refit", "--no-refit", has_calibration, "calibration inputs (--calibration ...)"),
        needs("shrinkage", "--no-shrinkage", has_calibration, "calibration inputs (--calibration ...)"),
        *(needs(dest, "--" + dest.replace("_", "-"), method == "damage", "--method damage")
          for dest in ("damage_samples", "damage_points", "damage_max_groups")),
        *((dest, not pruned_only, f"{flag} has no effect with --prune only (no layer is factorized); drop one of them")
          for dest, flag in (("both_factors", "--both-factors"), ("affine_correction", "--affine-correction"),
                             ("method", "--method"), ("error_measure", "--error"), ("order", "--order"),
                             ("max_groups", "--max-groups"), ("seed", "--seed"))),
        *(needs(dest, "--" + dest.replace("_", "-"), bool(getattr(args, "distill", False)), "--distill")
          for dest in sorted(given) if dest.startswith("distill_")),
        *((dest, not pruned_only, f"{flag} has no effect with --prune only (it acts on factorized layers); drop one "
           "of them") for dest, flag in (("sequential", "--sequential"), ("bias_correction", "--bias-correction"),
                                         ("sensitivity", "--sensitivity"), ("speed_check", "--speed-check"))),
        ("error_measure", method in (None, "alds"),
         f"--error has no effect with --method {method} (it allocates by its own measure); drop one of them"),
        ("max_groups", method in (None, "alds") or (method == "damage" and getattr(args, "damage_max_groups", 1) > 1),
         f"--max-groups has no effect with --method {method} (" + ("--damage-max-groups sets the group counts "
                                                                     "measured" if method == "damage" else
                                                                     "it keeps one group") + "); drop one of them"),
        ("seed", seed_takes_effect(method or "alds"),
         f"--seed has no effect with --method {method} (only ALDS's group search has random starts); drop one of "
         "them"),
        ("speed_check", getattr(args, "keep_latency", None) is None and getattr(args, "order", None) != "auto",
         "--speed-check has no effect with --keep-latency or --order auto (their latency tables already drop every "
         "option not measured faster than its dense layer); drop --speed-check"),
        ("sensitivity", method != "damage",
         "--sensitivity has no effect with --method damage (the damage tables measure each layer's effect on the "
         "outputs); drop one of them"),
        ("bias_correction", not (has_calibration and getattr(args, "affine_correction", False)),  # (else: needs it)
         "--bias-correction has no effect with --affine-correction (its per-channel mean and variance replace the "
         "bias correction's shift); drop one of them"),
    ]
    for dest, effective, message in rules:
        if dest in given and not effective:
            raise InputDataError(message)


def _run_compress(args: argparse.Namespace) -> int:
    from .api import compress
    from .inputs import inputs_from_args
    from .model_io import check_output_path, open_model, refuse_over_protobuf_limit

    check_flags_take_effect(args)
    output = Path(args.output)
    check_output_path(output, protect=[args.model])
    if args.report:
        check_output_path(Path(args.report), protect=[args.model, args.output], flag="--report")
    # light: the weights stay in their files, read one layer at a time, and the output is written
    # tensor by tensor (docs/LARGE_MODELS.md); the model is opened once, here
    model = open_model(args.model)
    if args.validate or args.distill:  # before the work: both hold whole models in memory
        refuse_over_protobuf_limit(model, f"{'--validate' if args.validate else '--distill'} holds the original "
                                          "and the compressed model in memory",
                                   fix=None if args.validate else "compress it without --distill")
    calibration = inputs_from_args(model.model, args, prefix="calibration-", required=False)
    held_out = None
    if args.distill:  # compress with the training part: the held-out part decides early stopping
        from .distill import split_for_distill

        calibration, held_out = split_for_distill(calibration, args, model.model)
    result = compress(model, calibration_workers=getattr(args, "calibration_workers", 1),
                      **compress_keywords(args, calibration))
    if args.distill:
        from .distill import distill_after_compress

        result, distilled = distill_after_compress(args.model, result, calibration, held_out, args)
        return write_result(args, result, extra=distilled)
    return write_result(args, result)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default where it says something: not for unset values (None, an empty list), not
    for on/off switches, and not where the help text already names the default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or isinstance(action.default, bool) or action.default in (None, [], (), argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def compress_keywords(args: argparse.Namespace, calibration) -> dict:
    """``compress``'s keyword arguments from the flags of compress (and plan)."""
    from .model_io import parse_input_shapes
    from .options import AUTO_ORDER, SpeedOptions

    speed = None
    if args.keep_latency is not None or args.order == AUTO_ORDER or args.speed_check:
        speed = SpeedOptions(provider=args.provider, threads=args.threads, batch=args.bench_batch,
                             prune_slow=args.speed_check, model_rounds=args.latency_rounds)
    return dict(keep_params=args.keep_params, keep_flops=args.keep_flops, keep_latency=args.keep_latency,
                method=args.method, error_measure=args.error_measure, rank_multiple=args.rank_multiple,
                exclude=args.exclude, seed=args.seed, input_shapes=parse_input_shapes(args.input_shape),
                max_groups=args.max_groups, calibration=calibration,
                calibration_batch_size=args.calibration_batch_size, refit=args.refit, sequential=args.sequential,
                bias_correction=args.bias_correction, sensitivity=args.sensitivity, order=args.order,
                shrinkage=args.shrinkage, speed=speed, both_factors=args.both_factors,
                affine_correction=args.affine_correction, damage_samples=args.damage_samples,
                damage_points=args.damage_points, damage_max_groups=args.damage_max_groups,
                **({"prune": args.prune} if getattr(args, "prune", "off") != "off" else {}),  # compress --prune
                **({"prune_heads": True} if getattr(args, "prune_heads", False) else {}))


def write_result(args: argparse.Namespace, result, extra=None) -> int:
    """``--validate``, then the model and its ``--report`` written together, and the report printed
    (compress and apply); ``extra``: the distillation report of ``compress --distill``, written to
    ``--distill-report`` after the model (nothing is written when validation fails)."""
    from .model_io import materialize
    from .report import write_json

    output = Path(args.output)
    summary = None
    if args.validate:
        from .validate import validate_from_args

        summary = validate_from_args(args.model, materialize(result.model, result.store), args, report=result.report,
                                     compressed_name=f"{output} (before it is written)")
    # warnings go to stderr, once, before anything is written; the table on stdout leaves them out
    text = "\n".join(line for line in result.report.format().splitlines() if not line.startswith("warning: "))
    for warning in result.report.warnings:  # said before anything is written (and before a failed validation's
        print(f"warning: {warning}", file=sys.stderr)  # error: a plan cut far below the budget explains it)
    if summary is not None and not summary.passed:  # no output on error: neither the model nor its report
        print(text if not args.quiet else text.split("\n\n", 1)[-1])
        print(summary.text)
        raise summary.failure
    args.written_files = []  # what an interrupt from here on leaves written (_run names it)
    from .model_io import save_model

    write_together(lambda also: save_model(result.model, output, protect=[args.model],
                                           store=getattr(result, "store", None), also=also),
                   output, result.report, args.report, written=args.written_files)
    distill_report = getattr(args, "distill_report", None) if extra is not None else None
    if distill_report:  # counted with its rename (an interrupt right after it is told it landed)
        write_json(extra.to_dict(), distill_report, also=lambda: args.written_files.append(str(distill_report)))
    print(text if not args.quiet else text.split("\n\n", 1)[-1])
    if summary is not None:  # (measured before the model was written, said before it)
        print(summary.text)
    print(f"wrote {' and '.join(args.written_files)}")
    if summary is None and not getattr(args, "quiet", False):  # nothing measured the written model's outputs yet
        print(_validate_hint(args.model, str(output), result.report.data_aware, result.model))
    return 0


def _validate_hint(model: str, output: str, data_aware: bool, written: Any = None) -> str:
    """The next step after an unvalidated compress/apply: the command that measures the written model (where
    its inputs can be fed from Python at all: not a bfloat16 input)."""
    from .inputs import refuse_unfeedable
    from .model_io import advice_path, graph_inputs

    basis = "calibration inputs" if data_aware else "weights alone"
    try:
        if written is not None:
            refuse_unfeedable(graph_inputs(written))
    except InputDataError as error:
        return (f"note: the errors above come from the {basis}, not from the model's outputs, which onnx-alds cannot "
                f"measure here: {error}")
    return (f"note: the errors above come from the {basis}, not from the model's outputs on held-out inputs; "
            f"measure those: onnx-alds validate {advice_path(model)} {advice_path(output)} --inputs FILE.npz "
            "(or --images DIR, or compress --validate)")


def write_together(save_output: Callable[[Optional[Callable[[], None]]], Any], output: Path, report,
                   report_path: Optional[str], *, written: Optional[list[str]] = None) -> None:
    """Write an output (``save_output(also)`` writes ``output`` atomically, a model or a plan, and runs
    ``also`` right after its final rename, uninterrupted with it: :func:`onnx_alds.model_io.landed`) and its
    JSON ``report`` both or neither: the report goes to a temporary file in its folder first, and is renamed
    into place with the output. ``written`` gets each path inside the renames' uninterrupted block (an
    interrupt held over them, or one that comes right after, is told both landed). Errors name
    ``report_path``, never the temporary file."""
    import os

    from .model_io import removed_whole, replace_keeping_mode, unused_name

    written = [] if written is None else written
    landed: list[str] = []
    pending: Optional[Path] = None

    def land_report_and_count() -> None:  # right after the output's rename, uninterrupted with it
        if report_path:
            replace_keeping_mode(pending, Path(report_path))
            landed.append(str(report_path))
        written.extend([str(output)] + landed)  # (an interrupt just after the renames is told they landed)

    try:
        if report_path:
            pending = unused_name(Path(report_path).parent, ".json")  # created by save_json inside the try
            try:
                report.save_json(pending)
            except OSError as exc:
                exc.filename = str(report_path)
                raise
            except OnnxAldsError as exc:
                raise type(exc)(str(exc).replace(str(pending), str(report_path))) from None
        save_output(land_report_and_count)
    finally:  # (a second Ctrl-C would leave the temporary report)
        removed_whole(lambda: os.unlink(pending) if pending is not None and os.path.exists(pending) else None)


def _add_validate(subparsers) -> None:
    from .validate import add_validate_arguments, run_validate_command

    parser = subparsers.add_parser("validate", help="compare a compressed model with its original in ONNX Runtime")
    add_validate_arguments(parser)
    parser.set_defaults(run=run_validate_command)


def _add_bench(subparsers) -> None:
    from .bench import add_bench_arguments, run_bench_command

    parser = subparsers.add_parser("bench", help="measure latency and throughput in ONNX Runtime")
    add_bench_arguments(parser)
    parser.set_defaults(run=run_bench_command)


def _add_sweep(subparsers) -> None:
    from .sweep import add_sweep_arguments, run_sweep_command

    parser = subparsers.add_parser("sweep", help="compress, validate and time a grid of budgets and methods "
                                                 "(locally or on Ray; resumable)")
    add_sweep_arguments(parser)
    parser.set_defaults(run=run_sweep_command)


def _add_distill(subparsers) -> None:
    from .distill import add_distill_arguments, run_distill_command

    parser = subparsers.add_parser("distill", help="train a compressed model's factor tensors to reproduce the "
                                                   "original's outputs (needs onnx-alds[distill])")
    add_distill_arguments(parser)
    parser.set_defaults(run=run_distill_command)


def _add_demo(subparsers) -> None:
    from .demo import add_demo_arguments, run_demo_command

    parser = subparsers.add_parser("demo", help="compress, validate and benchmark the bundled MNIST model")
    add_demo_arguments(parser)
    parser.set_defaults(run=run_demo_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnx-alds", description=__doc__.splitlines()[0].replace("``", ""),
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"onnx-alds {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_analyze, _add_compress, _add_plan, _add_apply, _add_validate, _add_bench, _add_sweep, _add_distill,
                _add_demo):
        add(subparsers)
    parser.allow_abbrev = False
    for command in subparsers.choices.values():  # every flag's default shown in its --help
        command.formatter_class = HelpFormatter
        command.allow_abbrev = False  # `--rank 8` read as --rank-multiple 8, `--keep-p` as --keep-params
        command.set_defaults(command_parser=command)  # (given_flags, _refuse_empty_values)
        command.error = _with_usage_hint(command)  # (argparse calls parser.error(message))
        # -v after the command too (`onnx-alds compress m.onnx -o s.onnx -v`); SUPPRESS keeps one given before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log diagnostics to stderr")
    return parser


OUTPUT_FILE_ARGS = {"output": "-o", "report": "--report", "json": "--json", "distill_report": "--distill-report"}


def _check_output_paths(args: argparse.Namespace) -> None:
    """Before any work: no output file may be one of the command's input files (model, plan,
    calibration or evaluation data ...), a folder, a device or link, or in an unwritable folder."""
    import os

    from .errors import OutputPathError
    from .inputs import IMAGE_SUFFIXES
    from .model_io import (check_data_file_name, check_output_path, may_need_external_data,
                           refuse_foreign_file, same_file)

    outputs = {key: getattr(args, key) for key in OUTPUT_FILE_ARGS if getattr(args, key, None)}
    dash = next((key for key, value in outputs.items() if value == "-"), None)
    if dash:  # a file called '-' is never what was meant
        raise OutputPathError(f"{OUTPUT_FILE_ARGS[dash]} '-': onnx-alds writes files, not standard output; give a "
                              "file path")
    if args.command in ("sweep", "demo"):
        outputs.pop("output", None)  # an output folder: checked by the command itself
    inputs: list = []
    for key, value in vars(args).items():
        if key in OUTPUT_FILE_ARGS or key in ("run", "out"):  # sweep's and demo's --out: their output folder
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (str, os.PathLike)) and str(item) and os.path.exists(item):
                inputs.append(item)
    # image folders (--images, --calibration-images ...): their images are read as data, so no output may
    # become one of them (a file or the plots of a sweep written straight into the folder)
    folders = [Path(value).resolve() for key, value in vars(args).items()
               if key.endswith("images") and isinstance(value, (str, os.PathLike)) and os.path.isdir(value)]
    out = getattr(args, "out", None) or (getattr(args, "output", None) if args.command in ("sweep", "demo") else None)
    if out and Path(out).resolve() in folders:  # an output folder
        flag = "-o" if args.command == "sweep" else "--out"
        raise OutputPathError(f"{flag} '{out}' is the image folder whose images are read as data (its plots would be "
                              "read as images too); choose another output folder")
    seen: dict[Path, str] = {}
    kinds: list[tuple[Path, str, str]] = []  # (path, what the command writes there, flag): checked after the paths
    for key, value in outputs.items():
        flag, resolved = OUTPUT_FILE_ARGS[key], Path(value).resolve()
        if str(value).endswith(("/", os.sep)) or os.path.basename(str(value)) in (".", ".."):  # Path() drops the
            raise OutputPathError(f"{flag} '{value}' names a folder (it ends with '{os.path.basename(value) or '/'}'); "
                                  "give a file path")  # slash, or the dot: a file would be written under the name
        # (model_io.same_file: the external-data name '<-o>.data' of a 255-byte -o is too long to look at)
        same = next((what for other, what in seen.items() if same_file(other, resolved)), None)
        if same:
            raise OutputPathError(f"{flag} '{value}' is also {same}; give each output its own path")
        seen[resolved] = f"the {flag} file"
        if key == "output":  # the weights file written beside the model when it has external data
            seen[resolved.with_name(resolved.name + ".data")] = "the weights file of -o (its external data)"
        if resolved.parent in folders and resolved.suffix.lower() in IMAGE_SUFFIXES:
            raise OutputPathError(f"{flag} '{value}' is an image in the input folder '{resolved.parent}', read as "
                                  f"data; choose another {flag} path")
        example = "plan.json" if key == "output" and args.command == "plan" else (
            f"{args.command if args.command in ('bench', 'validate') else 'analysis'}.json" if key == "json"
            else None)  # (a file name of the kind, for a folder given)
        check_output_path(Path(value), protect=inputs, flag=flag, example=example)
        kinds.append((Path(value), ("onnx-alds plan" if args.command == "plan" else "onnx-alds model")
                      if key == "output" else "onnx-alds report", flag))
        model = getattr(args, "model", None)
        if key == "output" and Path(value).suffix == ".onnx" and isinstance(model, str) and os.path.isfile(model) \
                and may_need_external_data(model):  # a weights file '<name>.data' may be written beside it
            check_data_file_name(Path(value))
    for path, writes, flag in kinds:  # (a swapped argument: a model lost)
        refuse_foreign_file(path, writes, flag=flag, command=args.command)


PREPROCESS_DESTS = ("preprocess", "resize", "crop", "mean", "std", "scale", "layout", "grayscale")
IMAGE_SOURCE_FLAGS = {"images": "--images", "calibration_images": "--calibration-images",
                      "validate_images": "--validate-images"}


def check_preprocess_flags(args: argparse.Namespace) -> None:
    """Image preprocessing flags with no image folder to read are an error (an .npz or random inputs are fed
    as they are: ``--layout NHWC`` would not transpose them). Raises InputDataError naming the flag."""
    sources = [flag for dest, flag in IMAGE_SOURCE_FLAGS.items() if hasattr(args, dest)]
    given = given_flags(args) & set(PREPROCESS_DESTS)
    if not sources or not given or any(getattr(args, dest, None) for dest in IMAGE_SOURCE_FLAGS):
        return
    flag = "--" + sorted(given)[0]
    raise InputDataError(f"{flag} has no effect without an image folder ({' or '.join(sources)}); arrays from an "
                         f".npz or --random are fed as they are: drop {flag}")


def check_random_seed_flag(args: argparse.Namespace) -> None:
    """``validate --seed`` draws the ``--random`` inputs and nothing else: with ``--inputs`` or ``--images`` it
    would change nothing. Raises InputDataError."""
    if args.command == "validate" and "seed" in given_flags(args) and getattr(args, "random", None) is None:
        raise InputDataError("--seed draws the --random inputs; with --inputs or --images it has no effect: drop it")


def _refuse_empty_values(args: argparse.Namespace) -> None:
    """An empty argument (``-o ''``, an unset ``$OUT``) is a usage error naming the flag; ``Path('')`` would
    read as the current folder."""
    parser = getattr(args, "command_parser", None)
    for action in getattr(parser, "_actions", []):
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            name = "/".join(action.option_strings) or action.metavar or action.dest
            parser.error(f"argument {name}: empty value; give a path or value (is a shell variable unset?)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; SIGTERM (``timeout``, a CI cancel, ``docker stop``) and SIGHUP (a closed terminal) end
    it as Ctrl-C does, through the same clean-up, so no temporary file or partial output is left."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _main(argv)
    from .signals import INTERRUPTS, ScriptExit, raise_interrupt, signal_handlers

    if argv is None:  # the command line's own process: a signal once the command finished exits with its code
        _SCRIPT[:] = [ScriptExit()]
        with signal_handlers(INTERRUPTS, _SCRIPT[0].handler):  # first: the modules' loading counts too
            _SCRIPT[0].exit(_main(argv))
    with signal_handlers(("SIGTERM", "SIGHUP"), raise_interrupt):  # first: the modules' loading counts too
        return _main(argv)


_SCRIPT: list = []  # the command line's own process: its signals.ScriptExit (main(argv=None) only)


_PARSED: list[str] = []  # the arguments being parsed, for the hints of usage errors


def _with_usage_hint(parser: argparse.ArgumentParser) -> Callable[[str], NoReturn]:
    """``parser.error`` saying why a positional went missing where a flag took it: ``--exclude`` takes
    every word after it (``--exclude P model.onnx``: "the following arguments are required: model")."""
    error = parser.error

    def with_hint(message: str) -> NoReturn:
        import os
        import re

        greedy = [flag for flag in ("--exclude",) if flag in _PARSED and _took_a_file(flag)]
        if greedy and "the following arguments are required" in message:
            message += (f" ({greedy[0]} takes every word after it as a pattern: give the model before "
                        f"{greedy[0]}, or end its patterns with --)")
        dashed = next((word for word in _PARSED if word.startswith("-") and len(word) > 1 and os.path.isfile(word)),
                      None)  # a file named like a flag ('-m.onnx') reads as one
        if dashed:
            message += (f" ('{dashed}' is a file whose name begins with a dash, read as an option: write "
                        f"./{dashed}, or give it after --)")
        elif "expected one argument" in message:  # (-o -c.onnx: a value named like a flag)
            flags = re.findall(r"(-[-\w]+)", message.split(":", 1)[0])
            taken = next((_PARSED[i + 1] for i, word in enumerate(_PARSED[:-1]) if word in flags
                          and _PARSED[i + 1].startswith("-") and "." in _PARSED[i + 1]), None)
            if taken:
                message += (f" ('{taken}' begins with a dash and reads as an option: write {flags[0]} ./{taken}, or "
                            f"{flags[0]}={taken})")
        error(message)

    return with_hint


def _took_a_file(flag: str) -> bool:
    """Whether a word ``flag`` took as its value (up to the next flag) names an existing file."""
    import os

    start = _PARSED.index(flag) + 1
    for word in _PARSED[start:]:
        if word.startswith("-"):
            return False
        if os.path.isfile(word):
            return True
    return False


def _loaded_parser() -> argparse.ArgumentParser:
    """:func:`build_parser` with Ctrl-C, SIGTERM and SIGHUP held while the modules load: raised inside a C
    extension's import, the interrupt broke it (an ImportError, a crash); held (recorded by a handler, so
    whichever thread the signal reaches), it is raised once they have loaded."""
    from .signals import held_signals

    with held_signals() as caught:
        parser = build_parser()
    if caught:
        raise KeyboardInterrupt
    return parser


def _main(argv: Optional[Sequence[str]]) -> int:
    try:
        parser = _loaded_parser()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while the modules load: nothing started
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    _usable_standard_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    _PARSED[:] = argv
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's own usage, which lists the flags it takes (argparse shows the top level's)
        (getattr(args, "command_parser", None) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    command_at = next((i for i, token in enumerate(argv) if token == args.command), None)
    if command_at is not None and getattr(args, "command_parser", None) is not None:
        refuse_repeated_flags(args.command_parser, argv[command_at + 1:])
        args.explicit_flags = explicit_flags(args.command_parser, argv[command_at + 1:])
    _refuse_empty_values(args)
    return _run(args)


def _usable_standard_streams() -> None:
    """A closed stdout or stderr (a service started with ``>&-``) becomes the null device, and characters
    the console's encoding lacks (an ASCII or cp1252 console, a layer named in Greek) print escaped: the
    report's lines are never a reason to fail after the files were written."""
    import os

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115 - for the process's life
        elif hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change (already written in another way)
                pass


class _LowerCaseLevels(logging.Formatter):
    """Log lines as the command's own lines read: ``warning: ...``, ``info: ...`` (a grep for ``warning:``
    finds them all)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return super().formatMessage(record).replace(f"{record.levelname}: ", f"{record.levelname.lower()}: ", 1)


def _run(args: argparse.Namespace) -> int:
    """The parsed command, with its log lines on stderr (``-v``: diagnostics too) and numeric warnings
    hidden unless ``-v``; the logging and warnings settings are the caller's again afterwards (``main``
    called in a running process: a test, a notebook)."""
    import warnings

    root = logging.getLogger()
    handler, level = None, root.level
    if not root.handlers:  # as logging.basicConfig: a process that configured its logging keeps it
        handler = logging.StreamHandler()
        handler.setFormatter(_LowerCaseLevels("%(levelname)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        with warnings.catch_warnings():
            if not args.verbose:  # numeric warnings (overflow on odd weights ...) are not a user's to act on
                warnings.filterwarnings("ignore", category=RuntimeWarning)
            code = _run_command(args)
            if _SCRIPT:  # its outputs have landed: a signal from here on exits with its code
                _SCRIPT[0].finished(code)
            return code
    finally:
        if handler is not None:
            root.removeHandler(handler)
            root.setLevel(level)


def _refuse_piped_models(args: argparse.Namespace) -> None:
    """A model given as a pipe (``cat m.onnx | onnx-alds validate /dev/stdin ...``) can be read once: the commands
    that read a model twice (validate, bench, sweep, distill, and compress or apply with --validate or
    --distill, which run the original again) got an empty second read and blamed the file. Raises
    :class:`ModelLoadError` naming the path, before any work."""
    from .model_io import is_stream

    if args.command in ("validate", "distill"):
        paths = [args.original, args.compressed]
    elif args.command in ("bench", "sweep"):
        paths = list(getattr(args, "models", None) or [])
    elif args.command in ("compress", "apply") and (getattr(args, "validate", False) or getattr(args, "distill", 0)):
        paths = [args.model]
    else:
        return
    for path in paths:  # (a missing one: the command's own check says so)
        if is_stream(path):
            raise ModelLoadError(f"'{path}' is a pipe or device, which {args.command} reads more than once; save the "
                                 "model to a file and give that path")


def _run_command(args: argparse.Namespace) -> int:
    """The parsed command, with every user-facing failure as one ``error:`` line and its exit code."""
    try:
        check_preprocess_flags(args)
        check_random_seed_flag(args)
        _check_output_paths(args)
        _refuse_piped_models(args)
        code = int(args.run(args) or 0)
        try:
            sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        except OSError as exc:
            if isinstance(exc, BrokenPipeError):
                raise
            print(f"error: writing the report to standard output failed ({exc.strerror or exc}); the files were "
                  "written", file=sys.stderr)
            return 1
        return code
    except OnnxAldsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except MemoryError as exc:  # numpy or scipy could not allocate (a memory limit, a model too large)
        detail = str(exc).splitlines()[0][:160] if str(exc) else "an allocation failed"
        kept = "no output was written" if args.command != "sweep" else "the variants finished so far are kept"
        print(f"error: out of memory ({detail}); {kept}: free memory or raise the limit, and see "
              "docs/LARGE_MODELS.md for what each step holds", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return _interrupted(args)
    except RuntimeError as exc:  # Python wraps an interrupt that lands in a class's __set_name__ (a lazy import)
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return _interrupted(args)
        raise
    except OSError as exc:  # from the operating system, not a bug: a name too long, a full disk, no permission
        if isinstance(exc, BrokenPipeError):
            return _quiet_broken_pipe()
        written = getattr(args, "written_files", None)
        if exc.filename is None and (written or _stdout_failed()):  # a print failed (stdout on a full disk)
            done = (f"{' and '.join(written)} {'was' if len(written) == 1 else 'were'} written" if written else
                    "no output was written")
            print(f"error: writing the report to standard output failed ({exc.strerror or exc}); {done}",
                  file=sys.stderr)
            return 1
        from .errors import os_error_text

        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return 1


def _interrupted(args: argparse.Namespace) -> int:
    """Ctrl-C or SIGTERM: one line saying what was written (nothing, unless the interrupt came after the
    output landed), exit status 130."""
    written = getattr(args, "written_files", None)
    if args.command == "sweep" and _finished_variants(args):
        print("error: interrupted; the variants finished so far are kept in the output folder (the same command "
              "resumes)", file=sys.stderr)
    elif args.command == "sweep":
        print("error: interrupted before any variant finished; no output was written", file=sys.stderr)
    elif written:
        print(f"error: interrupted after {' and '.join(written)} {'was' if len(written) == 1 else 'were'} written; "
              "the report on standard output may be cut short", file=sys.stderr)
    else:
        print("error: interrupted; no output was written", file=sys.stderr)
    return 130


def _finished_variants(args: argparse.Namespace) -> bool:
    """Whether a sweep's output folder holds a finished variant's row."""
    from .sweep import ROWS_DIR

    rows = Path(getattr(args, "out", "") or ".") / ROWS_DIR
    return rows.is_dir() and any(rows.glob("*.json"))


def _stdout_failed() -> bool:
    """Whether standard output cannot be written (a full disk behind ``> file``), asked after an OSError
    without a file name, which may have come from a print: one newline is written to find out."""
    import os

    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # (a stream in memory: a test's, a notebook's)
        return False
    try:
        os.write(descriptor, b"\n")
    except OSError:
        return True
    return False


def _quiet_broken_pipe() -> int:
    """stdout closed early (| head): files are already written; exit quietly (status 141)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


if __name__ == "__main__":
    sys.exit(main())
