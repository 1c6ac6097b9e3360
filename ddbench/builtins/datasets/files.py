"""The flow every built-in dataset read from files shares: a dataset only says where its
files live, which it expects and how to decode them; ``FileDataset`` finds them (downloading
when asked), decodes once through ``ddbench.data.cache`` and normalises. A failed download
leaves no partial file behind for a later offline load to pick up."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ddbench.components import DatasetSpec
from ddbench.data import cache
from ddbench.data.bundle import DataBundle
from ddbench.data.cache import RawSplits
from ddbench.data.files import dataset_error, one_line, params_dict
from ddbench.data.normalize import WITH_FLIP, to_bundle
from ddbench.errors import DDBenchError


class FileDataset(DatasetSpec):
    """Shared flow: find files (download when asked), decode through the cache, normalise."""

    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    dsa_strategy: ClassVar[str] = WITH_FLIP

    # -- per dataset
    def folder(self, root: Path) -> Path:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def expected(self) -> list[str]:
        """File names the decoder reads, relative to ``folder``."""
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def expected_text(self) -> str:
        return ", ".join(self.expected())

    def prepare(self, folder: Path) -> None:
        """Make present files readable (e.g. gunzip); runs before the existence check."""

    def urls(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def download(self, root: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    def download_creates(self, root: Path) -> list[Path]:
        """Paths a download may create: removed again when it fails."""
        folder = self.folder(root)
        return [folder / f for f in self.expected()]

    def decode(self, root: Path) -> RawSplits:
        raise NotImplementedError(f"{type(self).__name__} does not define this")

    # -- shared
    def missing(self, folder: Path) -> list[str]:
        return [f for f in self.expected() if not (folder / f).is_file()]

    def load(self, arg: str | None, root: Path, download: bool) -> DataBundle:
        root = Path(root).expanduser()
        folder = self.folder(root)
        self.prepare(folder)
        missing = self.missing(folder)
        if missing and download:
            self._download(root, folder)
            self.prepare(folder)
            missing = self.missing(folder)
            if missing:
                raise dataset_error(
                    self.name,
                    f"download finished but {', '.join(missing)} is still missing in {folder}",
                )
        if missing:
            what = "no files" if len(missing) == len(self.expected()) else f"missing {', '.join(missing)}"
            raise dataset_error(
                self.name,
                f"{what} in {folder} (expected {self.expected_text()}); "
                "put them there or pass --download",
            )
        sources = cache.fingerprint(folder / f for f in self.expected())
        raw = cache.cached(root, self.name, params_dict(self.params), sources,
                           lambda: self._decode(root, folder))
        return to_bundle(self.name, raw, self.mean, self.std, self.dsa_strategy)

    def _decode(self, root: Path, folder: Path) -> RawSplits:
        try:
            raw = self.decode(root)
            raw.check()
        except DDBenchError:
            raise
        except Exception as exc:  # corrupt or foreign files: one line naming them
            raise dataset_error(
                self.name, f"could not read the files in {folder}: {one_line(exc)}"
            ) from exc
        return raw

    def _download(self, root: Path, folder: Path) -> None:
        candidates = self.download_creates(root)
        before = {p for p in candidates if p.exists()}
        try:
            self.download(root)
        except BaseException as exc:
            # leave no partial or unverified file behind for a later offline load to pick up
            for p in candidates:
                if p not in before and p.is_file():
                    try:
                        p.unlink()
                    except OSError:
                        pass
            if not isinstance(exc, Exception):  # KeyboardInterrupt and the like
                raise
            raise dataset_error(
                self.name,
                f"download from {' or '.join(self.urls())} failed: {one_line(exc)}; "
                f"put the files in {folder} yourself",
            ) from None
