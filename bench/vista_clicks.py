"""Second click vs first click: VISTA-3D point prompts on the same image, through the model host.

Uses a full-size `vista3d132` (random weights: speed does not depend on them) in the official bundle
layout, on a 128³ CT region, driven through the same HostManager the server uses. The first click
loads, preprocesses and encodes the image and runs the class head; later clicks on the same series
reuse all of that (`vista3d_cache`) and run only the point head for the window the click touches.
Prints the first, second and third click; the last line is the ratio second / first (goal <= 0.1).
`--small` uses the small test network. `--mode bf16|openvino|fast` serves in an accelerated mode
(inference/accel/): its check runs first on another image, so the clicks timed are served in that mode.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from medcloud.config import Settings
from medcloud.demo.synthetic import write_synthetic_ct
from medcloud.families.vista3d.demo import make_vista3d_bundle
from medcloud.inference.hosts import HostManager, HostSpec


def ct_region(work: Path, name: str, seed: int) -> Path:
    """128³ voxels at 1.5 mm: one 128³ window after the official resampling."""
    image, _label = write_synthetic_ct(
        work / f"{name}.nii.gz",
        work / f"{name}_label.nii.gz",
        seed=seed,
        shape=(128, 128, 128),
        spacing=(1.5, 1.5, 1.5),
        rad_max=30,
        rad_min=20,
    )
    return image


async def run(small: bool, clicks: int, mode: str = "exact", min_dice: float = 0.99) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = make_vista3d_bundle(work, train=False, full_size=not small)
        image = ct_region(work, "ct", seed=3)
        hosts = HostManager(Settings(data_dir=work, model_sandbox="off").resolved())
        spec = HostSpec(
            experiment_id="clicks",
            kind="vista3d",
            bundle_dir=str(bundle),
            labels={"3": "spleen"},
            inference_mode=mode,
            check_min_dice=min_dice,
            prepare_wait_s=3600,  # time the clicks in the mode, not while its network is being built
        )
        started = time.perf_counter()
        await hosts.start(spec, timeout=1800)
        print(f"host start (load weights, warm up): {time.perf_counter() - started:.1f} s")
        if mode != "exact":
            other = ct_region(work, "check", seed=4)
            started = time.perf_counter()
            outputs = await hosts.infer(
                spec,
                image=str(other),
                timeout=3600,
                params={"points": [[64, 64, 64]], "point_labels": [1], "label_prompt": [3]},
            )
            check = outputs.inference or {}
            outputs.close()
            print(
                f"mode check on another image ({time.perf_counter() - started:.1f} s): serves {check.get('mode')}; "
                f"{check.get('reason')}; min Dice {(check.get('check') or {}).get('min_dice')}"
            )
        points: list[list[int]] = []
        times = []
        for index in range(clicks):
            points.append([64 + 3 * index, 64, 64])  # the annotator adds a click each time, OHIF-style
            started = time.perf_counter()
            await hosts.infer(
                spec,
                image=str(image),
                timeout=1800,
                params={"points": points, "point_labels": [1] * len(points), "label_prompt": [3]},
            )
            times.append(time.perf_counter() - started)
            print(f"click {index + 1}: {times[-1]:.2f} s")
        await hosts.stop_all()
    network = ("small VISTA3D" if small else "full-size vista3d132") + f", mode {mode}"
    print(f"first {times[0]:.2f} s, second {times[1]:.2f} s, third {times[2]:.2f} s" if clicks >= 3 else "")
    print(f"RATIO second/first click ({network}, 128^3): {times[1] / times[0]:.3f} (goal <= 0.1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--clicks", type=int, default=3, help="at least 2")
    parser.add_argument("--mode", default="exact", choices=["exact", "fast", "bf16", "openvino"])
    parser.add_argument(
        "--min-dice", type=float, default=0.99, help="the check's threshold (random weights agree less than trained)"
    )
    args = parser.parse_args()
    asyncio.run(run(args.small, args.clicks, args.mode, args.min_dice))


if __name__ == "__main__":
    main()
