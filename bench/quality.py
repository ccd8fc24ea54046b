"""Quality-check cost: what `media.quality`'s joint run costs beside a plain decode of the source.

Source: a 20 s 1920x1080 30 fps testsrc2 (`synth.make_clip`, H.264 ultrafast, with audio), four
renditions of it in one `commands.encode_ladder_args` run (libx264 veryfast, keyframes every
2 s: 1080p 5000, 720p 3000, 480p 1400, 240p 400 kb/s). Then, each run alone, wall and CPU
seconds (user + sys of the FFmpeg process, from the runner):

  decode      `ffmpeg -i source -map 0:v:0 -f null -` (Debian FFmpeg): the floor; and each
              rendition's `quality.decode_args` alone;
  psnr+ssim   the joint run, every=10 and every=1, Debian FFmpeg;
  +vmaf       the same with libvmaf (n_threads 2), imageio-ffmpeg's static build;
  variants    `-threads 1` on every input, `-filter_threads 1` and `-filter_threads 2`.

Prints a Markdown table and writes bench/quality.json; files live in bench/work/quality.

    .venv/bin/python bench/quality.py          # about 3 minutes on 2 cores
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mpegflow_dagster.media import quality  # noqa: E402
from mpegflow_dagster.media.commands import encode_ladder_args  # noqa: E402
from mpegflow_dagster.media.probe import probe  # noqa: E402
from mpegflow_dagster.media.runner import RunResult, run_ffmpeg  # noqa: E402
from mpegflow_dagster.media.synth import make_clip, x264_rung  # noqa: E402

WORK = ROOT / "bench" / "work" / "quality"
RUNGS = {1080: 5000, 720: 3000, 480: 1400, 240: 400}


def prepare() -> tuple[Path, list[quality.Compared]]:
    source = WORK / "source-20s-1080p30.mp4"
    if not source.is_file():
        make_clip(source, duration_s=20.0, width=1920, height=1080, fps=30)
    outs = {WORK / f"{h}p.mp4": x264_rung(h, kbps) for h, kbps in RUNGS.items()}
    if not all(p.is_file() for p in outs):
        t0 = time.monotonic()
        run_ffmpeg(encode_ladder_args(source, outs, threads=2))
        print(f"encoded the ladder in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    compared = []
    for h in RUNGS:
        video = probe(WORK / f"{h}p.mp4").video
        assert video is not None and video.width and video.height
        compared.append(quality.Compared(f"{h}p", WORK / f"{h}p.mp4", video.width, video.height))
    return source, compared


def with_option(args: list[str], option: str, value: str, *, per_input: bool) -> list[str]:
    if not per_input:
        return [option, value, *args]
    out: list[str] = []
    for token in args:
        if token == "-i":
            out += [option, value]
        out.append(token)
    return out


def timed(label: str, args: list[str], binary: str, cwd: Path, rows: list[dict]) -> RunResult:
    result = run_ffmpeg(args, ffmpeg=binary, cwd=cwd)
    rows.append({"run": label, "wall_s": round(result.wall_s, 2), "cpu_s": round(result.cpu_s, 2)})
    print(f"| {label} | {result.wall_s:.1f} | {result.cpu_s:.1f} |", file=sys.stderr)
    return result


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    source, compared = prepare()
    debian, vmaf = quality.metrics_binary("ffmpeg"), quality.metrics_binary("imageio-ffmpeg")
    out = WORK / "metrics"
    rows: list[dict] = []
    scores: dict[str, dict] = {}
    decode = ["-i", f"file:{source}", "-map", "0:v:0", "-f", "null", "-"]
    timed("decode the source (Debian)", decode, debian.path, WORK, rows)
    timed("decode the source (imageio 9.0)", decode, vmaf.path, WORK, rows)
    for c in compared:
        timed(f"decode {c.name} (Debian)", quality.decode_args(c.path), debian.path, WORK, rows)
    for every in (10, 1):
        for binary, use_vmaf in ((debian, False), (vmaf, False), (vmaf, True)):
            args = quality.compare_args(source, compared, out, every=every, vmaf=use_vmaf)
            label = (
                f"every={every} psnr+ssim{'+vmaf' if use_vmaf else ''} "
                f"({'Debian 5.1' if binary is debian else 'imageio 9.0'})"
            )
            timed(label, args, binary.path, out, rows)
            got = quality.read_scores(out, compared)
            scores[label] = {k: v.model_dump(mode="json") for k, v in got.items()}
    base = quality.compare_args(source, compared, out, every=10, vmaf=False)
    for option, value, per_input in (
        ("-threads", "1", True),
        ("-filter_threads", "1", False),
        ("-filter_threads", "2", False),
    ):
        where = "per input" if per_input else "global"
        label = f"every=10 psnr+ssim (Debian 5.1) {option} {value} {where}"
        timed(label, with_option(base, option, value, per_input=per_input), debian.path, out, rows)
    base = quality.compare_args(source, compared, out, every=10, vmaf=True)
    timed(
        "every=10 +vmaf (imageio 9.0) -threads 1 per input",
        with_option(base, "-threads", "1", per_input=True),
        vmaf.path,
        out,
        rows,
    )
    (ROOT / "bench" / "quality.json").write_text(
        json.dumps(
            {"debian": debian.version, "imageio": vmaf.version, "runs": rows, "scores": scores},
            indent=2,
        )
        + "\n"
    )
    print("| run | wall s | CPU s |\n|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['wall_s']} | {r['cpu_s']} |")


if __name__ == "__main__":
    main()
