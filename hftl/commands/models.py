"""``hftl eval`` and ``hftl predict``: a saved model, from a run folder, an export or the Hub."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hftl.errors import HftlError


def cmd_eval(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from hftl.config import instantiate
    from hftl.evaluation import classification_report, format_report, write_metrics
    from hftl.evaluation.predictions import collect_predictions
    from hftl.models.io import load_model
    from hftl.training.builders import build_loader

    target = _eval_target(args)  # checked before any model or data loads
    model, meta = load_model(model_ref(args), trust_remote_code=args.trust_remote_code)
    print_source(meta)
    if args.data:
        node = {"_component_": "hftl.data.ClassificationData", "path": args.data, "validation_size": 0}
        if args.input_column:
            node["input_column"] = args.input_column
        node["label_column"] = args.label_column
        node["check_train_classes"] = False  # the file is scored, not trained on: one class is fine
        split = "train" if args.split is None else args.split
        node["splits"] = None
    else:
        node = {"_component_": "hftl.data.ClassificationData", **_recorded_data(meta)}
        split = args.split or "test"
    node["label_names"] = meta["label_names"]
    data = instantiate(node).load()
    if split not in data:
        raise HftlError(f"--split {split!r} is not in the data; available splits: {', '.join(data)}")
    acc = Accelerator(cpu=args.cpu)
    loader = acc.prepare(
        build_loader(
            data[split],
            collate_fn=model.encoder.collator(train=False),
            batch_size=args.batch_size,
            shuffle=False,
        )
    )
    out = collect_predictions(acc, acc.prepare(model), loader)
    if "references" not in out:
        raise HftlError(
            f"Split {split!r} has no labels, so it cannot be scored; pass labelled data with --data"
        )
    report = classification_report(out["predictions"], out["references"], meta["label_names"])
    print(format_report(report, title=f"{split} ({len(data[split])} examples)"))
    write_metrics(target, {split: report, "data": args.data or "config", "model": meta["source"]})
    print(f"Metrics written to {target}")
    return 0


def _eval_target(args: argparse.Namespace) -> Path:
    """Where ``hftl eval`` writes: ``--output``, else ``eval_<split>.json`` in the hftl run folder that holds
    the model. Refused up front: a folder, a symlink or a file hftl did not write, or a model outside a run."""
    from hftl.evaluation.metrics import read_existing_metrics
    from hftl.models.io import MODEL_DIRNAME, find_model_dir
    from hftl.models.source import is_hub_source
    from hftl.training.run_dir import MARKER_FILE

    if args.output:
        target = Path(args.output)
        blocking = next((p for p in target.parents if p.exists() or p.is_symlink()), None)
        if blocking is not None and not blocking.is_dir():
            raise HftlError(
                f"--output {target}: {blocking} is not a folder (a file or a dangling symlink); pass a path "
                "in an existing or new folder"
            )
    else:
        if args.from_hub or is_hub_source(args.output_dir):
            raise HftlError(
                f"{args.output_dir} is a Hub model, outside any hftl run folder; pass --output FILE.json to say "
                "where the metrics go"
            )
        model_dir = find_model_dir(args.output_dir)
        run_dir = model_dir.parent
        if model_dir.name != MODEL_DIRNAME or not (run_dir / MARKER_FILE).is_file():
            raise HftlError(
                f"{model_dir} is not the model/ folder of an hftl run folder, and hftl writes only into folders "
                "it created; pass --output FILE.json to say where the metrics go"
            )
        target = run_dir / f"eval_{args.split or ('train' if args.data else 'test')}.json"
    read_existing_metrics(target)  # an existing file must be hftl's, or it is neither merged nor replaced
    return target


def model_ref(args: argparse.Namespace) -> str:
    """OUTPUT_DIR as the loaders take it: ``--from-hub user/name --revision R`` becomes ``hf://user/name@R``."""
    from hftl.models.source import HUB_PREFIX, is_hub_source, parse_hub_reference

    if not (args.from_hub or is_hub_source(args.output_dir)):
        if args.revision:
            raise HftlError(
                f"--revision {args.revision!r} applies to Hub models; add --from-hub or write hf://user/name@REV"
            )
        return args.output_dir
    repo_id, revision = parse_hub_reference(args.output_dir, args.revision)
    return f"{HUB_PREFIX}{repo_id}" + (f"@{revision}" if revision else "")


def print_source(meta: dict) -> None:
    """Names the exact Hub commit a model was loaded from (stderr: stdout stays the command's output)."""
    if meta["source"].startswith("hf://"):
        print(f"Loaded {meta['source']} ({meta['path']})", file=sys.stderr)


def _recorded_data(meta: dict) -> dict:
    """The data node of the model's own run (a local model only): plain values, ClassificationData only."""
    from hftl.models.records import recorded_data

    if meta["source"].startswith("hf://"):
        raise HftlError(
            f"{meta['source']}: a Hub model's config.yaml names the data of someone else's machine; pass the "
            "labelled data to score with --data"
        )
    return recorded_data(Path(meta["path"]))


def cmd_predict(args: argparse.Namespace) -> int:
    from hftl.export.runtime import OnnxPredictor, is_onnx_export

    if is_onnx_export(args.output_dir):  # an `hftl export --onnx` directory: onnxruntime, no torch
        predictor = OnnxPredictor(args.output_dir)
    else:
        from hftl.predict import Predictor

        predictor = Predictor.from_pretrained(model_ref(args), trust_remote_code=args.trust_remote_code)
        print_source(predictor.meta)
    results = predictor(args.inputs, batch_size=args.batch_size)
    for item, res in zip(args.inputs, results, strict=True):
        if args.json:
            print(json.dumps({"input": str(item), **res}))
        else:
            print(f"{res['label']}\t{res['score']:.4f}\t{item}")
    return 0


def add_source_flags(parser: argparse.ArgumentParser, *, trust: bool = True) -> None:
    """``--from-hub``/``--revision`` (and ``--trust-remote-code``) of the commands that load a saved model."""
    parser.add_argument(
        "--from-hub", action="store_true",
        help="OUTPUT_DIR is a Hub repo id user/name (same as writing hf://user/name); a missing local path "
        "is never looked up on the Hub otherwise.",
    )  # fmt: skip
    parser.add_argument("--revision", help="Hub branch, tag or commit (with --from-hub or hf://).")
    if trust:
        parser.add_argument(
            "--trust-remote-code", action="store_true",
            help="Let transformers import the .py files of a model with auto_map (refused otherwise). "
            "Only for code you have read.",
        )  # fmt: skip
    else:
        parser.set_defaults(trust_remote_code=False)


def positive_int(text: str) -> int:
    """argparse type of counts such as ``--batch-size``: a positive integer (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive; give a positive integer, e.g. 32")
    return value


def add_parsers(sub) -> None:
    """``eval`` and ``predict``."""
    ev = sub.add_parser("eval", help="Score a saved model on a labelled split.")
    ev.add_argument("output_dir")
    ev.add_argument(
        "--data",
        help="A data file/dir (csv, tsv, jsonl, parquet, audiofolder, ...); default: the training config's data.",
    )
    ev.add_argument(
        "--split", help="Split to score (default: test of the config's data, or the whole --data file)."
    )
    ev.add_argument("--input-column")
    ev.add_argument("--label-column", default="label")
    ev.add_argument("--batch-size", type=positive_int, default=64)
    ev.add_argument("--output", help="Where to write the metrics JSON (default: OUTPUT_DIR/eval_SPLIT.json).")
    ev.add_argument("--cpu", action="store_true")
    add_source_flags(ev)
    ev.set_defaults(handler=cmd_eval)
    pr = sub.add_parser(
        "predict", help="Predict labels: hftl predict OUTPUT_DIR 'some text' | file.wav | image.png"
    )
    pr.add_argument("output_dir")
    pr.add_argument("inputs", nargs="+")
    pr.add_argument("--batch-size", type=positive_int, default=32)
    pr.add_argument("--json", action="store_true", help="One JSON object per input with all class scores.")
    add_source_flags(pr)
    pr.set_defaults(handler=cmd_predict)
