"""Where a node gets a file it does not have: a peer node's cache first, then the source."""

from __future__ import annotations

from typing import IO

from tessera.datacache.source import FileEntry, Source


class SourceFetcher:
    """Reads every file from the dataset's source (range reads to resume)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def open(self, dataset: str, entry: FileEntry, offset: int) -> tuple[IO[bytes], str]:
        return self.source.open(entry.path, offset), "source"
