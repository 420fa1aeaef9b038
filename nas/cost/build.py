"""Building lookup tables: a row for every layer shape a table lacks, saved as it goes.

``TableBuilder`` is the building half of ``nas.cost.tables.LookupTable``: it finds the shapes a
table has no row for (``missing``), computes them in chunks (``_rows``: the energy model prices a
row at a time; a latency table times a group of layers in turn, in the company of the network
they belong to) and saves the table every ``flush_every`` new rows and at the end, also when
interrupted, so a killed build resumes where it stopped (``LookupTable.open`` + the same build).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Sequence

from nas.cost.layers import Layer, arch_layers
from nas.cost.shapes import space_layers

if TYPE_CHECKING:  # pragma: no cover
    from nas.arch import Arch
    from nas.cost.tablefile import RowKey


class TableBuilder(ABC):
    """Resumable building of a table's rows: the base of ``LookupTable`` (see the module docstring).

    The table provides ``entries`` and ``path`` and the methods below; each kind of table says how
    it computes rows (``_rows``)."""

    GROUP: ClassVar[int] = 24  # latency rows are timed in turn in groups of about one network's layers
    build_group: ClassVar[int | None] = None  # rows per chunk; None: GROUP (at most flush_every)
    entries: dict[RowKey, dict]
    path: Path | None

    @abstractmethod
    def key(self, layer: Layer) -> RowKey:
        """The row key of ``layer``."""

    @abstractmethod
    def covers(self, layer: Layer) -> bool:
        """Whether the table has (needs) a row for ``layer``."""

    @abstractmethod
    def add(self, layer: Layer, values: dict) -> None:
        """Set the row of ``layer``'s shape."""

    @abstractmethod
    def save(self, path: str | Path | None = None) -> Path:
        """Write the table to its file."""

    @abstractmethod
    def _rows(self, context: list[Layer], new: list[Layer]) -> list[dict]:
        """Row values of the layers ``new``, computed in the company of ``context`` (a list that
        contains them)."""

    # ------------------------------------------------------------------ what is missing
    def missing(self, layers: Iterable[Layer]) -> list[Layer]:
        """The distinct layers whose shape has no row yet (in first-seen order)."""
        seen, out = set(), []
        for layer in layers:
            if not self.covers(layer):
                continue
            k = self.key(layer)
            if k in self.entries or k in seen:
                continue
            seen.add(k)
            out.append(layer)
        return out

    # ------------------------------------------------------------------ building
    def build(self, layers: Iterable[Layer], *, progress: bool = True, flush_every: int = 50, desc: str = "pricing layers") -> int:
        """Add a row for every shape of ``layers`` not yet present.

        Saves to ``self.path`` (when set) every ``flush_every`` new rows and at the end, so a killed
        build resumes where it stopped. Latency rows are measured in round-robin groups (see
        ``nas.cost.latency.measure_layers``). Returns the number of rows added.
        """
        todo = self.missing(layers)
        if not todo:
            if self.path is not None and not self.path.exists():
                self.save()
            return 0
        group = self.build_group or max(1, min(flush_every, self.GROUP))
        chunks = ((c, c) for c in (todo[i : i + group] for i in range(0, len(todo), group)))
        return self._fill(chunks, len(todo), progress, flush_every, desc)

    def build_from_archs(self, archs: Iterable[Arch], *, progress: bool = True, flush_every: int = 50, total: int | None = None,
                         desc: str = "measuring layers") -> int:
        """Add the rows missing for the layers of ``archs`` (an iterable, e.g. ``space_cover_archs``).

        Latency tables time each arch's layers in turn as one group, i.e. in the company of the
        network they belong to, and keep the shapes not yet in the table; energy tables just price
        the missing shapes. Saves every ``flush_every`` new rows and at the end. Returns rows added.
        """

        def chunks() -> Iterator[tuple[list[Layer], list[Layer]]]:
            for arch in archs:
                layers = arch_layers(arch)
                new = self.missing(layers)
                if new:
                    yield layers, new

        return self._fill(chunks(), total, progress, flush_every, desc)

    def build_space(self, space: Any, ops: Sequence[str] | None = None, *, progress: bool = True, flush_every: int = 50,
                    seed: int = 0) -> int:
        """Add every missing layer shape of ``space`` under the conventions ``ops`` (default: every
        operator kind), priced one by one (``LatencyTable`` times them inside archs of the space).
        ``seed``: of the archs a latency table times the shapes in."""
        return self.build(space_layers(space, ops), progress=progress, flush_every=flush_every)

    def _fill(self, chunks: Iterable[tuple[list[Layer], list[Layer]]], total: int | None, progress: bool, flush_every: int,
              desc: str) -> int:
        """Add the rows of ``new`` for each ``(context, new)`` chunk (``_rows``). Saves every
        ``flush_every`` new rows and at the end (also when interrupted); returns rows added."""
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="shape", disable=not progress, leave=False)
        added = since = 0
        try:
            for context, new in chunks:
                for L, row in zip(new, self._rows(context, new)):
                    self.add(L, row)
                added += len(new)
                since += len(new)
                bar.update(len(new))
                if self.path is not None and since >= flush_every:
                    self.save()
                    since = 0
        finally:
            bar.close()
            if self.path is not None and since:
                self.save()
        return added
