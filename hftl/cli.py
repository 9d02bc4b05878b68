"""The ``hftl`` command: ls, run, validate, cp, eval, predict, assess, data, card, push, export.

``hftl run RECIPE --config NAME key=value ...`` runs ``recipes/RECIPE.py`` (shipped inside the package
as ``hftl.recipes``) exactly as ``python recipes/RECIPE.py --config ...`` would.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from hftl.errors import HftlError
from hftl.recipe import add_trust_flags


def recipe_names() -> list[str]:
    root = resources.files("hftl.recipes")
    return sorted(
        p.name[:-3] for p in root.iterdir() if p.name.endswith(".py") and not p.name.startswith("_")
    )


def recipe_file(name: str) -> Path:
    if name not in recipe_names():
        close = difflib.get_close_matches(name, recipe_names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise HftlError(
            f"Unknown recipe {name!r}; available: {', '.join(recipe_names())}.{hint} (`hftl ls` lists them)"
        )
    return Path(str(resources.files("hftl.recipes") / f"{name}.py"))


def cmd_ls(args: argparse.Namespace) -> int:
    from hftl.config import list_shipped_configs

    recipe_of = {c: _config_recipe(c) for c in list_shipped_configs()}
    print(f"{'RECIPE':<16} CONFIGS")
    for name in recipe_names():
        mine = [c for c, r in recipe_of.items() if r == name]
        print(f"{name:<16} {mine[0] if mine else '-'}")
        for c in mine[1:]:
            print(f"{'':<16} {c}")
    for c in (c for c, r in recipe_of.items() if r == "assess"):
        print(f"{'(hftl assess)':<16} {c}")
    return 0


def _config_recipe(name: str) -> str:
    from hftl.config import load_config

    return str(load_config(name).get("recipe", "finetune"))


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    path = recipe_file(args.recipe)
    if args.num_processes > 1:
        return _launch(path, args.num_processes, extra)
    module = importlib.import_module(f"hftl.recipes.{args.recipe}")
    return module.main(extra)


def _launch(path: Path, num_processes: int, extra: list[str]) -> int:
    """Multi-process data parallel through ``accelerate launch`` (gloo on CPU, NCCL on GPUs)."""
    import torch

    env = dict(os.environ)
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        "--multi_gpu",
    ]
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"  # `--cpu --num_processes N` would silently run one process
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(path)]
    return subprocess.call(launch + extra, env=env)


def cmd_validate(args: argparse.Namespace) -> int:
    from hftl.config import granted

    with granted(trust_remote_code=args.trust_remote_code, allow_env=args.allow_env):
        return _validate(args)


def _validate(args: argparse.Namespace) -> int:
    from hftl.config import load_config
    from hftl.recipe import load_and_validate

    recipe = args.recipe or str(load_config(args.config, args.overrides).get("recipe", "finetune"))
    if recipe == "assess":  # not a training recipe: the `hftl assess` command's config
        from hftl.assess import check_config

        check_config(args.config, args.overrides, allow_any=args.allow_any_component)
        print(f"{args.config}: OK for `hftl assess` (no problems found)")
        return 0
    recipe_file(recipe)
    module = importlib.import_module(f"hftl.recipes.{recipe}")
    load_and_validate(module.RECIPE, args.config, args.overrides, allow_any=args.allow_any_component)
    print(f"{args.config}: OK for recipe {recipe!r} (no problems found)")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    from hftl.config import resolve_config_path

    source = recipe_file(args.name) if args.name in recipe_names() else resolve_config_path(args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not args.force:
        raise HftlError(f"{dest} already exists; pass --force to overwrite it")
    shutil.copyfile(source, dest)
    print(f"Copied {source} to {dest}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from hftl.config import instantiate
    from hftl.evaluation import classification_report, format_report, write_metrics
    from hftl.evaluation.predictions import collect_predictions
    from hftl.models.io import load_model
    from hftl.training.builders import build_loader

    target = _eval_target(args)  # checked before any model or data loads
    model, meta = load_model(_model_ref(args), trust_remote_code=args.trust_remote_code)
    _print_source(meta)
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


def _model_ref(args: argparse.Namespace) -> str:
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


def _print_source(meta: dict) -> None:
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

        predictor = Predictor.from_pretrained(_model_ref(args), trust_remote_code=args.trust_remote_code)
        _print_source(predictor.meta)
    results = predictor(args.inputs, batch_size=args.batch_size)
    for item, res in zip(args.inputs, results, strict=True):
        if args.json:
            print(json.dumps({"input": str(item), **res}))
        else:
            print(f"{res['label']}\t{res['score']:.4f}\t{item}")
    return 0


def cmd_assess(args: argparse.Namespace) -> int:
    from hftl.assess import main as assess_main
    from hftl.config import granted

    with granted(trust_remote_code=args.trust_remote_code, allow_env=args.allow_env):
        return assess_main(args.config, args.overrides, allow_any=args.allow_any_component)


def _add_assess_command(sub) -> None:
    assess = sub.add_parser(
        "assess",
        help="Forecast transfer before training: rank candidate encoders x source domains for a target "
        "(LogME, H-score, LEEP/NCE, PAD, MMD) with negative-transfer warnings.",
    )
    assess.add_argument(
        "--config", required=True, help="Assess config name (e.g. assess/amazon_sources) or YAML."
    )
    assess.add_argument("--allow-any-component", action="store_true")
    add_trust_flags(assess)
    assess.add_argument("overrides", nargs="*", help="Dotted overrides, e.g. assess.target_labeled=200.")


def cmd_data(args: argparse.Namespace) -> int:
    import time

    from hftl.data.spoken_digits import make_spoken_digits

    start = time.perf_counter()
    voices = {"voices": args.voices} if args.voices else {}  # None: the module's DEFAULT_VOICES
    manifest = make_spoken_digits(
        args.out,
        per_digit=args.per_digit,
        digits=args.digits,
        seed=args.seed,
        force=args.force,
        workers=args.workers,
        **voices,
    )
    with open(manifest) as f:
        count = sum(1 for _ in f) - 1
    print(f"Wrote {count} clips (8 kHz mono WAV) and {manifest} in {time.perf_counter() - start:.1f} s")
    return 0


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="Make data sets: hftl data make-spoken-digits --out DIR")
    commands = data.add_subparsers(dest="data_command", required=True)
    mk = commands.add_parser(
        "make-spoken-digits",
        help="Synthesize spoken digits 0-9 with espeak-ng (8 kHz WAV + manifest.csv, source/target voices).",
    )
    mk.add_argument("--out", required=True, help="Folder to create (refused if non-empty, unless --force).")
    mk.add_argument(
        "--voices",
        nargs="+",
        help="espeak-ng voices, e.g. en-us en-gb en-us+f2 (`espeak-ng --voices=en` lists them); default: "
        "8 voices (hftl.data.spoken_digits.DEFAULT_VOICES).",
    )
    mk.add_argument(
        "--per-digit", type=int, default=6, help="Clips per voice and digit (random speed, pitch)."
    )
    mk.add_argument("--digits", nargs="+", type=int, default=list(range(10)), help="Digits to say (0-9).")
    mk.add_argument("--seed", type=int, default=0, help="Seed of the voice groups, speeds and pitches.")
    mk.add_argument("--workers", type=int, default=2, help="Parallel espeak-ng processes.")
    mk.add_argument("--force", action="store_true", help="Replace a non-empty --out folder.")


def cmd_card(args: argparse.Namespace) -> int:
    from hftl.hub import render_card

    path = render_card(
        args.output_dir,
        repo_id=args.repo_id,
        license=args.license,
        language=args.language,
        datasets=args.dataset,
        force=args.force,
    )
    print(f"Model card written to {path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from hftl.hub import push_to_hub

    url = push_to_hub(
        args.output_dir,
        repo_id=args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        commit_message=args.commit_message,
        render=not args.no_card,
        skip_unknown=args.skip_unknown,
    )
    print(f"Pushed {args.output_dir} to {args.repo_id}: {url}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if args.onnx:
        return _export_onnx(args)
    from hftl.hub import export_merged

    if not args.merge:
        raise HftlError(
            "`hftl export` needs --merge (a plain transformers classifier) or --onnx (one ONNX graph for onnxruntime)"
        )
    out = export_merged(_model_ref(args), args.out, force=args.force)
    print(f"Exported a plain transformers classifier to {out} (AutoModelFor*Classification.from_pretrained)")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from hftl.export import export_onnx

    if args.merge:
        raise HftlError("`hftl export` takes --merge or --onnx, not both (--onnx always merges LoRA/IA3 weights)")
    exporters = ("dynamo", "torchscript") if args.exporter == "auto" else (args.exporter,)
    spec = export_onnx(_model_ref(args), args.out, force=args.force, exporters=exporters)
    check = spec["export"]["parity"]
    print(
        f"Exported {args.out}/{spec['graph']} ({spec['export']['exporter']} exporter); onnxruntime vs PyTorch: max "
        f"|logit difference| {check['max_abs_diff']:.1e} (≤ {check['atol']:g}). Run it: hftl predict {args.out} ..., "
        f"or without hftl: {args.out}/README.md"
    )
    return 0


def _add_hub_commands(sub) -> None:
    card = sub.add_parser("card", help="(Re)render OUTPUT_DIR/model/README.md (model card) and its plots.")
    card.add_argument("output_dir")
    card.add_argument("--repo-id", help="Hub repo the card is for (shown in the loading example).")
    card.add_argument(
        "--license", help="License id for the front matter, e.g. apache-2.0 (default: unknown)."
    )
    card.add_argument("--language", help="Language code of the data, e.g. en (default: inferred when known).")
    card.add_argument("--dataset", action="append", help="Hub dataset id trained on (repeatable).")
    card.add_argument(
        "--force", action="store_true",
        help="Replace a README.md that was edited after hftl wrote it (refused otherwise: your edits are kept).",
    )  # fmt: skip
    push = sub.add_parser(
        "push", help="Upload OUTPUT_DIR/model to the Hub: hftl push OUTPUT_DIR --repo-id user/name"
    )
    push.add_argument("output_dir")
    push.add_argument("--repo-id", required=True, help="user/name or org/name; created when missing.")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True, help="(default)")
    visibility.add_argument("--public", dest="private", action="store_false", help="Create the repo public.")
    push.add_argument("--revision", help="Branch to commit to (created when missing).")
    push.add_argument("--create-pr", action="store_true", help="Open a pull request instead of committing.")
    push.add_argument("--commit-message")
    push.add_argument(
        "--no-card", action="store_true",
        help="Upload model/README.md as it is (default: render a fresh card, unless you edited README.md).",
    )  # fmt: skip
    push.add_argument(
        "--skip-unknown", action="store_true",
        help="Push without files in model/ that hftl did not write (default: refuse to push, naming them).",
    )  # fmt: skip
    export = sub.add_parser(
        "export", help="Export a trained model: hftl export --merge|--onnx OUTPUT_DIR --out DIR"
    )
    export.add_argument("output_dir")
    export.add_argument("--merge", action="store_true", help="Merge LoRA/IA3 weights into the base model.")
    export.add_argument(
        "--onnx", action="store_true",
        help="One ONNX graph (+ tokenizer/processor, hftl_onnx.json) that runs with onnxruntime, no hftl or torch.",
    )  # fmt: skip
    export.add_argument(
        "--exporter", choices=["auto", "dynamo", "torchscript"], default="auto",
        help="--onnx: torch.onnx exporter (auto: dynamo, then TorchScript if dynamo fails or misses the check).",
    )  # fmt: skip
    export.add_argument("--out", required=True, help="Directory to write.")
    export.add_argument(
        "--force", action="store_true",
        help="Replace an earlier export in --out (never another folder, nor one overlapping the source).",
    )  # fmt: skip
    _add_source_flags(export, trust=False)


def _add_source_flags(parser: argparse.ArgumentParser, *, trust: bool = True) -> None:
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


def _positive_int(text: str) -> int:
    """argparse type of counts such as ``--batch-size``: a positive integer (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; give a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive; give a positive integer, e.g. 32")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hftl", description="Transfer pretrained encoders to new domains.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="List recipes and their shipped configs.")
    run = sub.add_parser(
        "run", help="Run a recipe: hftl run finetune --config text/minilm_lora_sst2 key=value ..."
    )
    run.add_argument("recipe")
    run.add_argument(
        "--num-processes", type=int, default=1, help="Data-parallel processes (accelerate launch)."
    )
    val = sub.add_parser("validate", help="Check a config against a recipe; reports every problem at once.")
    val.add_argument("--config", required=True)
    val.add_argument(
        "--recipe", help="Recipe to check against (default: the config's `recipe:` key, else finetune)."
    )
    val.add_argument("--allow-any-component", action="store_true")
    add_trust_flags(val)
    val.add_argument("overrides", nargs="*")
    cp = sub.add_parser(
        "cp", help="Copy a recipe or shipped config to edit it: hftl cp finetune ./my_recipe.py"
    )
    cp.add_argument("name")
    cp.add_argument("dest")
    cp.add_argument("--force", action="store_true", help="Overwrite an existing file.")
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
    ev.add_argument("--batch-size", type=_positive_int, default=64)
    ev.add_argument("--output", help="Where to write the metrics JSON (default: OUTPUT_DIR/eval_SPLIT.json).")
    ev.add_argument("--cpu", action="store_true")
    _add_source_flags(ev)
    pr = sub.add_parser(
        "predict", help="Predict labels: hftl predict OUTPUT_DIR 'some text' | file.wav | image.png"
    )
    pr.add_argument("output_dir")
    pr.add_argument("inputs", nargs="+")
    pr.add_argument("--batch-size", type=_positive_int, default=32)
    pr.add_argument("--json", action="store_true", help="One JSON object per input with all class scores.")
    _add_source_flags(pr)
    _add_assess_command(sub)
    _add_data_commands(sub)
    _add_hub_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["run"] and len(argv) > 1 and not argv[1].startswith("-"):
            # Everything after the recipe name goes to the recipe's own parser.
            recipe, rest = argv[1], argv[2:]
            processes, rest = _pop_num_processes(rest)
            return cmd_run(argparse.Namespace(recipe=recipe, num_processes=processes), rest)
        args = build_parser().parse_args(argv)
        handler = {
            "ls": cmd_ls,
            "validate": cmd_validate,
            "cp": cmd_cp,
            "eval": cmd_eval,
            "predict": cmd_predict,
            "assess": cmd_assess,
            "data": cmd_data,
            "card": cmd_card,
            "push": cmd_push,
            "export": cmd_export,
        }[args.command]
        return handler(args)
    except HftlError as err:
        from hftl.config import redact  # values the user let a config read from the environment

        print(f"error: {redact(str(err))}", file=sys.stderr)
        return 2


def _pop_num_processes(argv: list[str]) -> tuple[int, list[str]]:
    """Takes ``--num-processes N`` (or ``=N``) out of a recipe's arguments."""
    rest, processes, i = [], 1, 0
    while i < len(argv):
        if argv[i].startswith("--num-processes="):
            processes = argv[i].split("=", 1)[1]
        elif argv[i] == "--num-processes" and i + 1 < len(argv):
            processes, i = argv[i + 1], i + 1
        else:
            rest.append(argv[i])
        i += 1
    if not str(processes).isdigit() or int(processes) < 1:
        raise HftlError(f"--num-processes must be a positive integer; got {processes!r}")
    return int(processes), rest


if __name__ == "__main__":
    raise SystemExit(main())
