"""The viewer's coordinate conversions (static/js/coords.js) against NiiVue and against numpy.

The API speaks the image's own voxel order; NiiVue reorients to RAS. On an LPS volume and on an
oblique one, loaded into NiiVue in a real browser exactly as the viewer loads the server's NRRD:
a world position maps to the same native voxel as numpy's inverse affine; a label placed at a
native voxel is drawn where NiiVue shows that voxel's image value; and native → drawing → native
is the identity.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path

import numpy as np
import pytest
from browser import browser
from viewer_driver import ViewerDriver

from medcloud.devserver import medcloud_serve
from medcloud.inference.nrrd_writer import write_raw_nrrd

SHAPE = (23, 17, 11)  # all different, so a wrong permutation cannot pass by symmetry


def _lps_affine() -> np.ndarray:
    # What an axial CT series becomes: x to the left and y to the back (RAS diagonal -, -, +).
    return np.array([[-0.8, 0, 0, 90.0], [0, -0.9, 0, 110.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]])


def _oblique_affine() -> np.ndarray:
    def rot(axis: int, degrees: float) -> np.ndarray:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        i, j = [a for a in range(3) if a != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        return m

    # A tilted gantry and a rotated, permuted acquisition: axes swapped, flipped and turned.
    rotation = rot(0, 20) @ rot(2, 35) @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([1.1, 0.7, 1.9])
    affine[:3, 3] = [-12.0, 30.0, 7.0]
    return affine


def _nrrd_bytes(volume: np.ndarray, affine: np.ndarray, dtype: type, tmp: Path) -> str:
    path = tmp / "v.nrrd"
    write_raw_nrrd(path, volume, affine, dtype=dtype)
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    with medcloud_serve(tmp_path_factory.mktemp("coords") / "data") as server, browser() as chromium:
        page = ViewerDriver.open(chromium, server.url).page
        yield page
        assert not page.errors, page.errors


LOAD_AND_MAP = """
async ({imageB64, labelB64, mm, voxel}) => {
  const { Niivue } = await import('/viewer/vendor/niivue.js');
  const coords = await import('/viewer/js/coords.js');
  const nrrd = await import('/viewer/js/nrrd.js');
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)).buffer;
  const canvas = document.createElement('canvas');
  canvas.width = 256; canvas.height = 256;
  document.body.append(canvas);
  const nv = new Niivue({ logLevel: 'error' });
  await nv.attachToCanvas(canvas);
  const image = bytes(imageB64);
  await nv.loadFromArrayBuffer(image, 'image.nrrd');
  const back = nv.volumes[0];
  const parsed = await nrrd.readNrrd(image);
  const inverse = coords.invertAffine(parsed.geometry.affine);
  const lut = coords.rasToNativeLut(back);
  const label = (await nrrd.readNrrd(bytes(labelB64))).voxels;
  const drawing = coords.nativeToDrawing(label, lut);
  const r = drawing.indexOf(1);
  const d = back.dimsRAS;
  const ras = [r % d[1], Math.floor(r / d[1]) % d[2], Math.floor(r / (d[1] * d[2]))];
  const drawnMm = Array.from(nv.frac2mm(nv.vox2frac(ras), 0, true)).slice(0, 3);
  const valueThere = back.getValue(ras[0], ras[1], ras[2]);
  const roundTrip = coords.drawingToNative(drawing, lut);
  let same = roundTrip.length === label.length;
  for (let i = 0; same && i < label.length; i++) same = roundTrip[i] === label[i];
  canvas.remove();
  return {
    fromMm: coords.mmToVoxel(inverse, parsed.geometry.sizes, mm),
    backToMm: coords.voxelToMm(parsed.geometry.affine, voxel),
    outside: coords.mmToVoxel(inverse, parsed.geometry.sizes, [1e4, 1e4, 1e4]),
    drawnMm, valueThere, roundTrip: same, drawnCount: drawing.filter((v) => v === 1).length,
    dimsRAS: Array.from(d.slice(1, 4)),
    inverseLut: coords.nativeToRasLut(lut)[voxel[0] + voxel[1] * parsed.geometry.sizes[0]
      + voxel[2] * parsed.geometry.sizes[0] * parsed.geometry.sizes[1]] === r,
  };
}
"""


@pytest.mark.parametrize("affine", [_lps_affine(), _oblique_affine()], ids=["lps", "oblique"])
def test_native_voxels_and_niivue_agree(page, affine: np.ndarray, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    image = rng.integers(-1000, 1000, size=SHAPE).astype(np.int16)
    voxel = (17, 4, 8)
    image[voxel] = 3071  # unique value: NiiVue must show it where the label is drawn
    label = np.zeros(SHAPE, np.uint8)
    label[voxel] = 1
    mm = (affine @ [*voxel, 1])[:3]
    got = page.evaluate(
        LOAD_AND_MAP,
        {
            "imageB64": _nrrd_bytes(image, affine, np.int16, tmp_path),
            "labelB64": _nrrd_bytes(label, affine, np.uint8, tmp_path),
            # a click a little off the voxel centre still lands on it
            "mm": list(mm + affine[:3, :3] @ [0.3, -0.2, 0.4]),
            "voxel": list(voxel),
        },
    )
    assert got["fromMm"] == list(voxel)
    np.testing.assert_allclose(got["backToMm"], mm, atol=1e-6)
    assert got["outside"] is None
    assert got["drawnCount"] == 1 and got["roundTrip"] and got["inverseLut"]
    assert got["valueThere"] == 3071  # the drawing voxel is the image voxel NiiVue shows there
    np.testing.assert_allclose(got["drawnMm"], mm, atol=1e-3)  # and NiiVue puts it at the voxel's world position
    assert sorted(got["dimsRAS"]) == sorted(SHAPE)
