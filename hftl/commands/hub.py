"""``hftl card``, ``hftl push``, ``hftl export``: publishing a trained model."""

from __future__ import annotations

import argparse

from hftl.commands.models import add_source_flags, model_ref
from hftl.errors import HftlError


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
    if args.data:
        raise HftlError(
            "`hftl export --merge` has no parity check to feed: --data applies to --onnx only; drop --data"
        )
    out = export_merged(model_ref(args), args.out, force=args.force)
    print(f"Exported a plain transformers classifier to {out} (AutoModelFor*Classification.from_pretrained)")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from hftl.export import export_onnx

    if args.merge:
        raise HftlError(
            "`hftl export` takes --merge or --onnx, not both (--onnx always merges LoRA/IA3 weights)"
        )
    exporters = ("dynamo", "torchscript") if args.exporter == "auto" else (args.exporter,)
    spec = export_onnx(model_ref(args), args.out, force=args.force, exporters=exporters, data=args.data)
    check = spec["export"]["parity"]
    print(
        f"Exported {args.out}/{spec['graph']} ({spec['export']['exporter']} exporter); onnxruntime vs PyTorch: max "
        f"|logit difference| {check['max_abs_diff']:.1e} (≤ {check['atol']:g}). Run it: hftl predict {args.out} ..., "
        f"or without hftl: {args.out}/README.md"
    )
    return 0


def add_parsers(sub) -> None:
    """``card``, ``push`` and ``export``."""
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
    card.set_defaults(handler=cmd_card)
    _add_push_parser(sub)
    _add_export_parser(sub)


def _add_push_parser(sub) -> None:
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
    push.set_defaults(handler=cmd_push)


def _add_export_parser(sub) -> None:
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
        "--data", help="--onnx: also parity-check on rows of this data file/folder (default: the run's data)."
    )
    export.add_argument(
        "--force", action="store_true",
        help="Replace an earlier export in --out (never another folder, nor one overlapping the source).",
    )  # fmt: skip
    add_source_flags(export, trust=False)
    export.set_defaults(handler=cmd_export)
