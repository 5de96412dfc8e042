"""Metadata of many records stored by column, each record's ``meta`` a light view of one row.

A per-record dict of 40 parsed values costs about 3 KB; ISIC 2024's 401,059 records would take
over a gigabyte that way. Here numbers are ``float64`` arrays (NaN = missing) and categories small
integer codes into each column's values, and ``LesionRecord.meta`` is a :class:`MetaRow`: a
read-only mapping that gives the same values a dict would (``float`` or ``None`` for numbers, the
category string or ``None``). ``MetadataEncoder.fit`` reads whole columns at once through
:class:`ColumnReader`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from datamodules.records import MetaValue


class MetaColumns:
    """The parsed metadata of ``n`` rows: ``numbers`` (column -> float64 array, NaN missing) and
    ``categories`` (column -> list of values, ``None`` missing)."""

    def __init__(self, numbers: Mapping[str, np.ndarray], categories: Mapping[str, Sequence[Optional[str]]]):
        self.numbers = {name: np.asarray(values, dtype=np.float64) for name, values in numbers.items()}
        self.codes: dict[str, np.ndarray] = {}
        self.values: dict[str, list[Optional[str]]] = {}
        for name, column in categories.items():
            codes, uniques = pd.factorize(np.asarray(column, dtype=object), use_na_sentinel=False)
            self.codes[name] = codes.astype(np.int16 if len(uniques) < 2**15 else np.int32)
            self.values[name] = [None if pd.isna(v) else str(v) for v in uniques]
        self.names = [*self.numbers, *self.codes]
        lengths = {len(v) for v in [*self.numbers.values(), *self.codes.values()]}
        if len(lengths) > 1:
            raise ValueError(f"metadata columns of different lengths: {sorted(lengths)}")
        self.n = lengths.pop() if lengths else 0

    def rows(self) -> list["MetaRow"]:
        return [MetaRow(self, i) for i in range(self.n)]

    def value(self, name: str, i: int) -> MetaValue:
        if name in self.numbers:
            x = float(self.numbers[name][i])
            return None if x != x else x
        return self.values[name][self.codes[name][i]]


class MetaRow(Mapping[str, MetaValue]):
    """Row ``index`` of a :class:`MetaColumns`, as a read-only ``{column: value}`` mapping."""

    __slots__ = ("columns", "index")

    def __init__(self, columns: MetaColumns, index: int):
        self.columns, self.index = columns, index

    def __getitem__(self, name: str) -> MetaValue:
        if name not in self.columns.numbers and name not in self.columns.codes:
            raise KeyError(name)
        return self.columns.value(name, self.index)

    def get(self, name: str, default: Any = None) -> Any:
        if name not in self.columns.numbers and name not in self.columns.codes:
            return default
        return self.columns.value(name, self.index)

    def __contains__(self, name: object) -> bool:
        return name in self.columns.numbers or name in self.columns.codes

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns.names)

    def __len__(self) -> int:
        return len(self.columns.names)

    def __repr__(self) -> str:
        return repr(dict(self))


class ColumnReader:
    """``[meta.get(name) for meta in metas]`` per column, read from the columns at once when every
    row is a :class:`MetaRow` of one :class:`MetaColumns` (the values are the same either way)."""

    def __init__(self, metas: Sequence[Mapping[str, MetaValue]]):
        self.metas = metas
        self.shared = _shared_columns(metas)
        self.rows = None if self.shared is None else \
            np.fromiter((meta.index for meta in metas), dtype=np.int64, count=len(metas))

    def values(self, name: str) -> list[MetaValue]:
        shared = self.shared
        if shared is None:
            return [meta.get(name) for meta in self.metas]
        if name in shared.numbers:
            numbers = shared.numbers[name][self.rows].tolist()
            return [None if x != x else x for x in numbers]
        if name in shared.codes:
            return np.asarray(shared.values[name], dtype=object)[shared.codes[name][self.rows]].tolist()
        return [None] * len(self.metas)


def _shared_columns(metas: Sequence[Mapping[str, MetaValue]]) -> Optional[MetaColumns]:
    if not metas or not isinstance(metas[0], MetaRow):
        return None
    columns = metas[0].columns
    if all(isinstance(meta, MetaRow) and meta.columns is columns for meta in metas):
        return columns
    return None
