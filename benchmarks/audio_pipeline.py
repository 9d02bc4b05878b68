"""Audio input pipeline throughput vs the model's training step rate: is data loading the bottleneck?

Pipeline = what a training DataLoader does per clip: decode the 8 kHz FSDD wav (soundfile), resample to
16 kHz (torchaudio), augment (noise at 5-20 dB SNR, speed 0.9/1.0/1.1, gain, shift; SpecAugment masks on
log-mel inputs), crop to 1 s and run the feature extractor, through the same AudioCollator, epoch-keyed
sampler and DataLoader as the recipes, with 0, 2, ... workers. Model = one optimizer step (forward,
backward, AdamW) of a Classifier on a collated batch, on the accelerate device. The ratio
pipeline clips/s ÷ model clips/s says how many times faster than the model the loader delivers
(below 1: the GPU waits for data; add workers).

Run (from the repo root; FSDD in $HFTL_DATA_DIR or ../shared/data):
    python benchmarks/audio_pipeline.py --quick          # CPU subset, ~3 min on 2 cores
    python benchmarks/audio_pipeline.py --workers 0 2 4 8 --batch-size 64 --steps 30 --mixed-precision bf16

Writes benchmarks/results/audio_pipeline.md (tables + command + machine) and audio_pipeline.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hftl.data import ClassificationData, with_example_keys
from hftl.data.samplers import EpochSampler
from hftl.encoders import AudioCollator

HERE = Path(__file__).resolve().parent
RATE = 16_000
WAVE_AUG = {
    "noise_prob": 0.5,
    "snr_min": 5,
    "snr_max": 20,
    "speed_prob": 0.3,
    "gain_prob": 0.5,
    "shift_prob": 0.5,
}
SPEC_AUG = {"time_mask_prob": 0.5, "time_mask_param": 20, "freq_mask_prob": 0.5, "freq_mask_param": 10}


def extractor(name: str):
    """``raw``: wav2vec2-style normalized waveform; ``fbank``: 80 log-mel filter banks (Kaldi, 10 ms hop)."""
    from transformers import Speech2TextFeatureExtractor, Wav2Vec2FeatureExtractor

    if name == "raw":
        return Wav2Vec2FeatureExtractor(sampling_rate=RATE, return_attention_mask=True)
    return Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=80, sampling_rate=RATE)


def collator(fe_name: str, augment: bool) -> AudioCollator:
    aug = ({**WAVE_AUG, **SPEC_AUG} if fe_name == "fbank" else WAVE_AUG) if augment else None
    return AudioCollator(extractor(fe_name), max_duration=1.0, train=True, seed=0, augment=aug)


def pipeline_rate(dataset, fe_name: str, augment: bool, workers: int, batch_size: int) -> dict:
    """Steady-state clips/s of one pass over ``dataset``: clips after the first batch ÷ time after it.

    The wait for the first batch (worker start-up, paid once per run with persistent workers) is
    reported separately as ``first_batch_s``.
    """
    keyed, sampler = with_example_keys(dataset, EpochSampler(len(dataset), seed=0))
    loader = DataLoader(keyed, batch_size=batch_size, sampler=sampler, collate_fn=collator(fe_name, augment),
                        num_workers=workers)  # fmt: skip
    start = time.perf_counter()
    first, clips = None, 0
    for batch in loader:
        if first is None:
            first = time.perf_counter()
        else:
            clips += len(batch["labels"])
    seconds = time.perf_counter() - first
    return {"kind": "pipeline", "features": fe_name, "augment": augment, "workers": workers,
            "clips": clips, "seconds": round(seconds, 3), "first_batch_s": round(first - start, 3),
            "clips_per_s": round(clips / seconds, 1)}  # fmt: skip


def build_model(name: str):
    """A Classifier (encoder + linear head, 10 digits) and the feature extractor it reads."""
    from transformers import Wav2Vec2Config

    from hftl.encoders import AudioEncoder, SpeechCNNTransformerConfig
    from hftl.models import Classifier, LinearHead

    if name == "speech_cnn":  # the from-scratch encoder of audio/fsdd_speaker_shift, at 16 kHz / 80 mel
        config = SpeechCNNTransformerConfig(num_mel_bins=80, hidden_size=128, num_layers=2, num_heads=4,
                                            intermediate_size=256, input_layout="time_mel")  # fmt: skip
        fe_name = "fbank"
    else:  # wav2vec2-base architecture (95 M parameters), random init: same compute as the checkpoint
        config, fe_name = Wav2Vec2Config(layerdrop=0.0), "raw"
    encoder = AudioEncoder(config, processor=extractor(fe_name), pooling="stats", max_duration=1.0)
    head = LinearHead(in_features=encoder.out_features, num_labels=10)
    return Classifier(encoder, head, [str(d) for d in range(10)]), fe_name


def model_rate(name: str, dataset, *, batch_size: int, steps: int, mixed_precision: str) -> dict:
    """Clips/s of training steps (forward + backward + AdamW) on one collated 1 s batch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    acc = Accelerator(mixed_precision=mixed_precision)
    model, fe_name = build_model(name)
    rows = [dataset[i % len(dataset)] for i in range(batch_size)]
    batch = collator(fe_name, augment=False)(rows)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model, optimizer = acc.prepare(model, optimizer)
    batch = {k: v.to(acc.device) for k, v in batch.items()}
    model.train()

    def step() -> None:
        with acc.autocast():
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits.float(), batch["labels"])
        acc.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(1 if acc.device.type == "cpu" else 3):  # warm-up (allocator, kernels)
        step()
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if acc.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    n_params = sum(p.numel() for p in params)
    return {"kind": "model", "model": name, "features": fe_name, "parameters": n_params, "batch_size": batch_size,
            "steps": steps, "device": str(acc.device), "precision": mixed_precision,
            "steps_per_s": round(steps / seconds, 3), "clips_per_s": round(steps * batch_size / seconds, 3)}  # fmt: skip


def machine() -> str:
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{platform.machine()}, {os.cpu_count()} CPU cores (OMP_NUM_THREADS={threads}){gpu}, torch {torch.__version__}"


def table(rows: list[dict], command: str) -> str:
    pipes = [r for r in rows if r["kind"] == "pipeline"]
    models = [r for r in rows if r["kind"] == "model"]
    out = [
        "# Audio pipeline throughput vs training step rate",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Data: FSDD train clips (8 kHz wav, mean 0.44 s) → 16 kHz, cropped to 1 s; clips/s is the steady "
        f"rate after the first batch ({pipes[0]['clips']} clips timed per pass; CPU ms/clip = workers ÷ clips/s). Augmentation: noise p=0.5 (white/pink/brown, 5-20 dB SNR), speed p=0.3 (0.9/1.0/1.1), gain p=0.5, "
        "shift p=0.5; fbank adds SpecAugment (2 time masks < 20 frames, 2 frequency masks < 10 bins, p=0.5 each).",
        "",
        "## Pipeline (decode + resample + augment + features)",
        "",
        "| features | augment | workers | clips/s | CPU ms/clip | first batch (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in pipes:
        per_clip = 1000 * r["seconds"] / r["clips"] * max(1, r["workers"])
        out.append(
            f"| {r['features']} | {'yes' if r['augment'] else 'no'} | {r['workers']} | {r['clips_per_s']} | {per_clip:.2f} | {r['first_batch_s']} |"
        )
    out += ["", "## Model training steps", "", "| model | parameters | batch | device / precision | steps/s | clips/s |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for m in models:
        out.append(
            f"| {m['model']} | {m['parameters'] / 1e6:.2f} M | {m['batch_size']} | {m['device']} / {m['precision']} | {m['steps_per_s']} | {m['clips_per_s']} |"
        )
    out += ["", "## Ratio: pipeline clips/s ÷ model clips/s (augmentation on; > 1 = data loading keeps up)", "",
            "| model | features | " + " | ".join(f"{w} workers" for w in sorted({p['workers'] for p in pipes})) + " |",
            "|---|---|" + "---|" * len({p["workers"] for p in pipes})]  # fmt: skip
    for m in models:
        cells = [
            f"{p['clips_per_s'] / m['clips_per_s']:.2f}"
            for p in sorted(pipes, key=lambda p: p["workers"])
            if p["features"] == m["features"] and p["augment"]
        ]
        out.append(f"| {m['model']} | {m['features']} | " + " | ".join(cells) + " |")
    out += ["", "Worker start-up (first batch) is excluded from clips/s: with `train.num_workers > 0` the loader's "
            "workers persist across epochs. Timings on a shared machine vary by ±30 % between runs. GPU run: "
            "`python benchmarks/audio_pipeline.py --workers 0 2 4 8 --batch-size 64 --steps 30 --mixed-precision bf16`."]  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="CPU subset: 400 clips, 2 timed steps, wav2vec2 batch 4."
    )
    parser.add_argument("--clips", type=int, default=2700, help="FSDD train clips per pipeline pass.")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=["speech_cnn", "wav2vec2_base"],
                        choices=["speech_cnn", "wav2vec2_base"])  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="Timed training steps per model.")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--out", default=str(HERE / "results" / "audio_pipeline"))
    args = parser.parse_args()
    if args.quick:
        args.clips, args.steps = min(args.clips, 400), min(args.steps, 2)
    data = ClassificationData(path="hftl:fsdd", validation_size=0)
    train = data.load()["train"]
    train = train.select(range(min(args.clips, len(train))))
    rows = []
    for fe_name in ("raw", "fbank"):
        for augment in (False, True):
            for workers in args.workers:
                rows.append(pipeline_rate(train, fe_name, augment, workers, args.batch_size))
                print(json.dumps(rows[-1]), flush=True)
    for name in args.models:
        batch = args.batch_size if name == "speech_cnn" or not args.quick else min(args.batch_size, 4)
        rows.append(
            model_rate(name, train, batch_size=batch, steps=args.steps, mixed_precision=args.mixed_precision)
        )
        print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/audio_pipeline.py " + " ".join(sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table(rows, command.strip()))
    with open(out.with_suffix(".jsonl"), "w") as fh:
        for row in rows:
            fh.write(json.dumps({**row, "command": command.strip(), "machine": machine()}) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
