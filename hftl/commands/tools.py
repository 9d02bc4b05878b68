"""``hftl assess`` (transferability before training) and ``hftl data`` (making data sets)."""

from __future__ import annotations

import argparse

from hftl.recipe import add_trust_flags


def cmd_assess(args: argparse.Namespace) -> int:
    from hftl.assess import main as assess_main
    from hftl.config import granted

    with granted(trust_remote_code=args.trust_remote_code, allow_env=args.allow_env):
        return assess_main(args.config, args.overrides, allow_any=args.allow_any_component)


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


def add_parsers(sub) -> None:
    """``assess`` and ``data make-spoken-digits``."""
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
    assess.set_defaults(handler=cmd_assess)
    _add_data_parser(sub)


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="Make data sets: hftl data make-spoken-digits --out DIR")
    data.set_defaults(handler=cmd_data)
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
