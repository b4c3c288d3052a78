"""Cold vs warm: the first inference after `POST /experiments` returns vs the steady state.

The model host loads the bundle and runs a warm-up pass before the POST answers 201, so the first
request should cost about what later ones do. The last line is the ratio (goal <= 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import Client, single_image_dataset, summary

from medcloud.demo.bundles import ensure_demo_bundles
from medcloud.demo.synthetic import write_synthetic_ct
from medcloud.devserver import medcloud_serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--experiments", type=int, default=3)
    args = parser.parse_args()
    firsts, steady = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo = ensure_demo_bundles(Path(__file__).resolve().parents[1] / ".medcloud" / "test-cache")
        ct, _ = write_synthetic_ct(work / "ct.nii.gz", work / "label.nii.gz", seed=9, shape=(96, 96, 96))
        with medcloud_serve(work / "server") as server:
            client = Client.login(server)
            image_id = single_image_dataset(work / "data", ct)
            dataset_id = client.dataset(work / "data")
            client.cache(dataset_id, image_id)
            for _ in range(args.experiments):
                experiment_id, created = client.realtime_experiment(dataset_id, demo["segmentation"])
                print(f"POST /experiments (bundle fetched, host warm): {created * 1000:.0f} ms")
                firsts.append(client.infer(experiment_id, image_id))
                steady += [client.infer(experiment_id, image_id) for _ in range(args.runs)]
                client.http.delete(f"/experiments/{experiment_id}")
    print(summary("first inference after create", firsts))
    print(summary("steady state", steady))
    ratio = statistics.median(firsts) / statistics.median(steady)
    print(f"RATIO cold/warm (median first / median steady): {ratio:.2f}")


if __name__ == "__main__":
    main()
