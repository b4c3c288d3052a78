"""Hostile archives (zip and tar): links, absolute paths, special files and bombs are refused, nothing escapes."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from medcloud.archives import ArchiveError, safe_extract

MIB = 1024**2


def zip_with(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def zip_symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix: the mode bits below are read
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def written(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else []


def test_a_plain_zip_and_tar_unpack(tmp_path: Path) -> None:
    zipped = zip_with(tmp_path / "ok.zip", [("b/configs/metadata.json", b"{}"), ("b/models/", b"")])
    safe_extract(zipped, tmp_path / "z")
    assert (tmp_path / "z" / "b" / "configs" / "metadata.json").read_bytes() == b"{}"
    tarred = tar_with(tmp_path / "ok.tar.gz", [(tar_member("b/configs/metadata.json"), b"{}")])
    safe_extract(tarred, tmp_path / "t")
    assert (tmp_path / "t" / "b" / "configs" / "metadata.json").read_bytes() == b"{}"


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "link.zip", [(zip_symlink("b/configs/metadata.json", "/etc/passwd"), b"/etc/passwd")])
    with pytest.raises(ArchiveError, match="link"):
        safe_extract(archive, tmp_path / "out")
    assert written(tmp_path / "out") == []


def test_zip_absolute_member_is_refused(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "abs.zip", [("/tmp/medcloud-absolute-member", b"x")])
    with pytest.raises(ArchiveError, match="absolute path"):
        safe_extract(archive, tmp_path / "out")
    assert written(tmp_path / "out") == []


def test_zip_bomb_is_refused_from_its_headers_before_writing(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "bomb.zip", [("b/zeros.bin", bytes(9 * MIB))])
    assert archive.stat().st_size < 100 * 1024  # tiny on disk
    with pytest.raises(ArchiveError, match="more than"):
        safe_extract(archive, tmp_path / "out", max_bytes=MIB)
    assert written(tmp_path / "out") == []


def test_zip_whose_headers_lie_about_the_size_is_refused(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "liar.zip", [("b/zeros.bin", bytes(4 * MIB))])
    data = bytearray(archive.read_bytes())
    central = data.rfind(b"PK\x01\x02")  # the central directory entry: uncompressed size at offset 24
    data[central + 24 : central + 28] = (100).to_bytes(4, "little")
    local = data.find(b"PK\x03\x04")  # the local header: uncompressed size at offset 22
    data[local + 22 : local + 26] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError):
        safe_extract(archive, tmp_path / "out", max_bytes=MIB)
    assert sum(p.stat().st_size for p in written(tmp_path / "out")) <= MIB


def test_zip_with_too_many_members_is_refused(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "many.zip", [(f"b/{i}.txt", b"") for i in range(50)])
    with pytest.raises(ArchiveError, match="more than 10 members"):
        safe_extract(archive, tmp_path / "out", max_members=10)
    assert written(tmp_path / "out") == []


def test_tar_symlink_member_is_refused(tmp_path: Path) -> None:
    # Even a link that stays inside the folder: a later member could be written through it.
    archive = tar_with(tmp_path / "sym.tar.gz", [(tar_member("b/link", tarfile.SYMTYPE, "configs"), None)])
    with pytest.raises(ArchiveError, match="link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "b" / "link").is_symlink()


def test_tar_hard_link_member_is_refused(tmp_path: Path) -> None:
    archive = tar_with(
        tmp_path / "hard.tar",
        [(tar_member("b/a.txt"), b"a"), (tar_member("b/b.txt", tarfile.LNKTYPE, "b/a.txt"), None)],
        mode="w",
    )
    with pytest.raises(ArchiveError, match="link"):
        safe_extract(archive, tmp_path / "out")
    assert written(tmp_path / "out") == []


def test_tar_absolute_member_is_refused(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "abs.tar.gz", [(tar_member("/tmp/medcloud-absolute-member"), b"x")])
    with pytest.raises(ArchiveError, match="absolute path"):
        safe_extract(archive, tmp_path / "out")
    assert written(tmp_path / "out") == []


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_tar_device_and_fifo_members_are_refused(tmp_path: Path, kind: bytes) -> None:
    archive = tar_with(tmp_path / "dev.tar", [(tar_member("b/dev"), b"x"), (tar_member("b/zero", kind), None)], "w")
    with pytest.raises(ArchiveError, match="special file"):
        safe_extract(archive, tmp_path / "out")
    assert written(tmp_path / "out") == []


def test_tar_bomb_is_refused_from_its_headers_before_writing(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "bomb.tar.gz", [(tar_member("b/zeros.bin"), bytes(9 * MIB))])
    with pytest.raises(ArchiveError, match="more than"):
        safe_extract(archive, tmp_path / "out", max_bytes=MIB)
    assert written(tmp_path / "out") == []


def test_tar_with_too_many_members_is_refused(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "many.tar.gz", [(tar_member(f"b/{i}.txt"), b"") for i in range(50)])
    with pytest.raises(ArchiveError, match="more than 10 members"):
        safe_extract(archive, tmp_path / "out", max_members=10)
    assert written(tmp_path / "out") == []


def test_tar_escaping_member_is_refused(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "up.tar.gz", [(tar_member("b/../../escaped.txt"), b"x")])
    with pytest.raises(ArchiveError, match="escapes"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
