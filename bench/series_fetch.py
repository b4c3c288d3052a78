"""Series fetch: `cacheimage` + first inference on a DICOMweb series vs inference on a cached series.

A real Orthanc holds synthetic CT series (256x256x`--slices`); the model is the demo 3D segmentation
bundle, warm. The first figure includes the WADO-RS retrieve and the series → volume conversion; the
second only the model. The last line is the ratio of the two medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import Client
from dicom_data import store_ct
from orthanc import orthanc_server

from medcloud.demo.bundles import ensure_demo_bundles
from medcloud.devserver import medcloud_serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--slices", type=int, default=64)
    args = parser.parse_args()
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = ensure_demo_bundles(Path(__file__).resolve().parents[1] / ".medcloud" / "test-cache")["segmentation"]
        with orthanc_server(work / "orthanc") as orthanc, medcloud_serve(work / "server") as server:
            uids = [store_ct(orthanc, seed=200 + i, shape=(256, 256, args.slices)).uid for i in range(args.series)]
            client = Client.login(server)
            dataset_id = client.http.post(
                "/datasets",
                json={
                    "name": "pacs",
                    "client_url": orthanc.url,
                    "client_id": orthanc.user,
                    "client_secret": orthanc.password,
                },
            ).json()["id"]
            experiment_id, _ = client.realtime_experiment(dataset_id, bundle, inference_dataset=dataset_id)
            for uid in uids:
                started = time.perf_counter()
                client.cache(dataset_id, uid)
                client.infer(experiment_id, uid)
                cold.append(time.perf_counter() - started)
                warm += [client.infer(experiment_id, uid) for _ in range(3)]
    print(
        f"cacheimage + first inference : median {statistics.median(cold):.2f} s  ({', '.join(f'{t:.2f}' for t in cold)})"
    )
    print(f"inference on a cached series : median {statistics.median(warm):.2f} s")
    print(f"RATIO series fetch (first / cached, medians): {statistics.median(cold) / statistics.median(warm):.2f}")


if __name__ == "__main__":
    main()
