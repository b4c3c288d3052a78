"""DeepEdit: click latency vs automatic-segmentation latency on the same image, warm, through the model host.

Runs the small demo DeepEdit (or `--official-size`: the model zoo's full DynUNet at 128³, random
weights: speed does not depend on them) in the official bundle layout, driven through the same
HostManager the server uses. Each request is timed end to end (socket, bundle preprocessing with the
click transforms, network, inversion, NRRD written). Prints p50/p90 of each; the last line is the
ratio click / automatic (p50).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from common import percentile, summary

from medcloud.config import Settings
from medcloud.families.deepedit.demo import deepedit_ct_volume, make_deepedit_bundle
from medcloud.inference.hosts import HostManager, HostSpec


def official_size(bundle: Path) -> None:
    """The model zoo's own network and spatial size (128³, DynUNet 32..320 filters) in place of the small ones."""
    from medcloud.families.deepedit.demo import OFFICIAL

    for name in ("inference.json", "train.json"):
        (bundle / "configs" / name).write_text((OFFICIAL / "configs" / name).read_text())
    meta = json.loads((OFFICIAL / "configs" / "metadata.json").read_text())
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))


async def run(full: bool, repeats: int, shape: tuple[int, int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = make_deepedit_bundle(work, train=False)
        if full:
            import torch
            from monai.bundle import ConfigParser

            from medcloud.families.deepedit.predictor import bundle_scripts_importable

            official_size(bundle)
            bundle_scripts_importable(bundle)
            parser = ConfigParser(json.loads((bundle / "configs" / "inference.json").read_text()))
            torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
        volume = deepedit_ct_volume(5, shape=shape, organs=2, ambiguous=1)
        image = volume.save(work / "ct.nii.gz")
        hosts = HostManager(Settings(data_dir=work, model_sandbox="off").resolved())
        spec = HostSpec(experiment_id="clicks", kind="deepedit", bundle_dir=str(bundle), labels={"1": "spleen"})
        started = time.perf_counter()
        await hosts.start(spec, timeout=1800)
        print(f"host start (load weights, warm up): {time.perf_counter() - started:.1f} s")

        async def timed(params: dict) -> float:
            started = time.perf_counter()
            await hosts.infer(spec, image=str(image), timeout=1800, params=params)
            return time.perf_counter() - started

        await timed({})  # the first request on an image reads it from disk cold
        auto, clicks = [], []
        spleen = [volume.inside(volume.ambiguous[0])]
        background = [volume.inside(volume.organs[0])]
        for index in range(repeats):
            auto.append(await timed({}))
            # an annotator adds a click each time
            clicks.append(await timed({"spleen": spleen * (1 + index % 3), "background": background}))
        await hosts.stop_all()
    network = "official-size DynUNet 128^3" if full else "small demo DynUNet 32^3"
    print(summary("automatic (no clicks)", auto))
    print(summary("with clicks", clicks))
    p50 = percentile(clicks, 50) / percentile(auto, 50)
    print(f"RATIO click / automatic p50 ({network}, image {shape}): {p50:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--official-size", action="store_true", help="the model zoo's network size (128^3)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    shape = (160, 160, 96) if args.official_size else (96, 96, 64)
    asyncio.run(run(args.official_size, args.repeats, shape))


if __name__ == "__main__":
    main()
