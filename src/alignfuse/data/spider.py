"""Text-to-SQL data in the Spider format, as question-to-schema linking examples.

A Spider ``tables.json`` lists each database's schema (tables and columns with their natural
and original names, column types, primary and foreign keys); a questions file lists
``db_id``, a question (``question``, or Spider-Syn's ``SpiderQuestion`` /
``SpiderSynQuestion``) and its SQL ``query``. The gold links of a question are the tables
and columns its SQL uses, read with a real SQL parser (``sqlglot``): every table of every
``FROM`` / ``JOIN`` (nested queries and set operations included), every column after aliases
are resolved (``T1.name``, unqualified columns, ``ORDER BY`` an output alias). ``*`` links no
column. Identifiers compare case-insensitively, as SQLite does; double-quoted text is a
string, as in Spider's queries.

A question whose ``db_id`` is unknown, whose SQL does not parse, or whose SQL names a column
or table that is not in its schema is not an example: it is reported in
:attr:`LinkingData.errors` with its index in the file (``strict=True`` raises at the first
one instead), never dropped without a count.

Example:
    >>> schema = Schema.from_json({
    ...     "db_id": "pets", "table_names": ["student", "pet"],
    ...     "table_names_original": ["Student", "Pet"],
    ...     "column_names": [[-1, "*"], [0, "student id"], [0, "name"], [1, "pet id"],
    ...                      [1, "owner id"], [1, "pet age"]],
    ...     "column_names_original": [[-1, "*"], [0, "StuID"], [0, "Name"], [1, "PetID"],
    ...                               [1, "OwnerID"], [1, "pet_age"]],
    ...     "column_types": ["text", "number", "text", "number", "number", "number"],
    ...     "primary_keys": [1, 3], "foreign_keys": [[4, 1]]})
    >>> tables, columns = gold_links(
    ...     "SELECT T1.name FROM student AS T1 JOIN pet AS T2 ON T1.stuid = T2.ownerid "
    ...     "WHERE T2.pet_age > 2", schema)
    >>> sorted(schema.tables[t] for t in tables), sorted(schema.column_names[c] for c in columns)
    (['pet', 'student'], ['name', 'owner id', 'pet age', 'student id'])
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignfuse.errors import DataError
from alignfuse.registry import DATASETS


@dataclass(frozen=True)
class Schema:
    """One database's schema. Columns are numbered from 0 without Spider's ``*`` entry.

    Attributes:
        db_id: the database's name.
        tables, tables_original: natural and original table names.
        column_tables: the table of each column.
        column_names, columns_original: natural and original column names.
        column_types: ``text``, ``number``, ``time``, ``boolean``, ``others``.
        primary_keys: columns that are (part of) a primary key.
        foreign_keys: ``(column, referenced column)`` pairs.
    """

    db_id: str
    tables: tuple[str, ...]
    tables_original: tuple[str, ...]
    column_tables: tuple[int, ...]
    column_names: tuple[str, ...]
    columns_original: tuple[str, ...]
    column_types: tuple[str, ...]
    primary_keys: frozenset[int] = frozenset()
    foreign_keys: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Schema:
        """Read one entry of a Spider ``tables.json``."""
        try:
            db_id = str(raw["db_id"])
            names, originals = raw["column_names"], raw["column_names_original"]
            if len(names) != len(originals) or len(names) != len(raw["column_types"]):
                raise DataError(f"schema {db_id!r}: column lists of different lengths")
            # Spider's column 0 is "*" (table -1); drop it and renumber
            star = 1 if names and names[0][0] == -1 else 0
            keys = raw.get("primary_keys") or []
            flat_keys: list[int] = []
            for k in keys:  # a composite primary key is a list
                flat_keys.extend(k if isinstance(k, list) else [k])
            return cls(
                db_id=db_id,
                tables=tuple(str(t) for t in raw["table_names"]),
                tables_original=tuple(str(t) for t in raw["table_names_original"]),
                column_tables=tuple(int(t) for t, _ in names[star:]),
                column_names=tuple(str(n) for _, n in names[star:]),
                columns_original=tuple(str(n) for _, n in originals[star:]),
                column_types=tuple(str(t) for t in raw["column_types"][star:]),
                primary_keys=frozenset(int(k) - star for k in flat_keys),
                foreign_keys=tuple((int(a) - star, int(b) - star) for a, b in raw["foreign_keys"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            name = raw.get("db_id", "?") if isinstance(raw, dict) else "?"
            raise DataError(f"schema {name!r} is not in the Spider format: {err!r}") from None

    @property
    def n_tables(self) -> int:
        return len(self.tables)

    @property
    def n_columns(self) -> int:
        return len(self.column_names)

    def table_columns(self, table: int) -> list[int]:
        """The columns of ``table``, in schema order."""
        return [c for c, t in enumerate(self.column_tables) if t == table]

    @functools.cached_property
    def sql_schema(self) -> dict[str, object]:
        """``{table: {column: type}}`` by lower-cased original names, for the SQL parser."""
        out: dict[str, object] = {}
        for t, name in enumerate(self.tables_original):
            out[name.lower()] = {
                self.columns_original[c].lower(): "text" for c in self.table_columns(t)
            }
        return out


def load_schemas(path: str | Path) -> dict[str, Schema]:
    """Every schema of a Spider ``tables.json``, by ``db_id``."""
    raw = _read_json(path)
    if not isinstance(raw, list):
        raise DataError(f"{path}: a tables.json holds a list of schemas, got {type(raw).__name__}")
    return {s.db_id: s for s in (Schema.from_json(r) for r in raw)}


def _read_json(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{p} is not valid JSON: {err}") from None


def gold_links(query: str, schema: Schema) -> tuple[frozenset[int], frozenset[int]]:
    """The tables and columns (indices into ``schema``) that ``query`` uses.

    Raises:
        DataError: the query does not parse, or names a table or column not in the schema.
    """
    try:
        import sqlglot
    except ImportError:
        raise ImportError(
            "reading gold links from SQL needs sqlglot: pip install 'alignfuse[schema]'"
        ) from None
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.optimizer.qualify import qualify
    from sqlglot.optimizer.scope import traverse_scope

    try:
        # MySQL reads "..." as a string (Spider's convention); identifiers compare lower-cased
        tree = sqlglot.parse_one(query, read="mysql")
        for ident in tree.find_all(exp.Identifier):
            ident.set("this", ident.name.lower())
        for table in tree.find_all(exp.Table):
            if table.name not in schema.sql_schema:
                raise DataError(f"table {table.name!r} is not in schema {schema.db_id!r}")
        tree = qualify(
            tree,
            schema=dict(schema.sql_schema),
            dialect="mysql",
            validate_qualify_columns=True,
            quote_identifiers=False,
            identify=False,
        )
        scopes = traverse_scope(tree)
    except SqlglotError as err:
        first = str(err).splitlines()[0]
        raise DataError(f"query {query!r} of {schema.db_id!r}: {first}") from None
    table_index = {name.lower(): t for t, name in enumerate(schema.tables_original)}
    column_index = {
        (schema.column_tables[c], name.lower()): c for c, name in enumerate(schema.columns_original)
    }
    tables: set[int] = set()
    columns: set[int] = set()
    for scope in scopes:
        for source in scope.sources.values():
            if isinstance(source, exp.Table):
                tables.add(table_index[source.name])
        for col in scope.columns:
            origin = scope.sources.get(col.table)
            if isinstance(origin, exp.Table):  # not a column of a derived table
                key = (table_index[origin.name], col.name)
                if key not in column_index:
                    raise DataError(
                        f"query {query!r}: column {col.name!r} is not in table "
                        f"{origin.name!r} of {schema.db_id!r}"
                    )
                columns.add(column_index[key])
    return frozenset(tables), frozenset(columns)


@dataclass(frozen=True)
class LinkingExample:
    """One question with the tables and columns its SQL uses.

    Attributes:
        index: the question's position in its file.
        db_id: its database.
        question: the natural-language question.
        query: its SQL.
        tables, columns: the gold links (indices into the schema).
        kind: Spider-DK's ``type`` (``"0"`` no domain knowledge, ``"1"``-``"5"`` the
            paper's types, two digits both), ``None`` elsewhere.
    """

    index: int
    db_id: str
    question: str
    query: str
    tables: frozenset[int]
    columns: frozenset[int]
    kind: str | None = None


@dataclass
class LinkingData:
    """Linking examples over their schemas, and the questions that could not be used."""

    examples: list[LinkingExample]
    schemas: dict[str, Schema]
    errors: list[tuple[int, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: Sequence[int]) -> LinkingData:
        """The examples at ``indices`` (positions in :attr:`examples`), same schemas."""
        return LinkingData([self.examples[i] for i in indices], self.schemas, [], self.source)


QUESTION_FIELDS = ("question", "SpiderQuestion", "SpiderSynQuestion")


@DATASETS.register("spider")
def load_spider(
    questions: str | Path,
    tables: str | Path,
    question_field: str | None = None,
    strict: bool = False,
) -> LinkingData:
    """Spider-format questions (any file with ``db_id``, a question field and ``query``) with
    their gold schema links.

    Args:
        questions: the questions file (a JSON list).
        tables: the ``tables.json`` holding their schemas.
        question_field: which field holds the question (default: ``question`` if the file's
            first entry has one, else ``SpiderQuestion``); ``SpiderSynQuestion`` reads
            Spider-Syn's synonym-substituted questions.
        strict: raise at the first unusable question instead of reporting it.
    """
    schemas = load_schemas(tables)
    raw = _read_json(questions)
    if not isinstance(raw, list):
        raise DataError(f"{questions}: a questions file holds a list, got {type(raw).__name__}")
    if question_field is None:
        first = raw[0] if raw and isinstance(raw[0], dict) else {}
        question_field = "question" if "question" in first else "SpiderQuestion"
    if question_field not in QUESTION_FIELDS:
        raise DataError(
            f"question_field must be one of {', '.join(QUESTION_FIELDS)}, got {question_field!r}"
        )
    examples: list[LinkingExample] = []
    errors: list[tuple[int, str]] = []
    for i, item in enumerate(raw):
        try:
            if not isinstance(item, dict):
                raise DataError(f"entry is a {type(item).__name__}, not a mapping")
            missing = [k for k in ("db_id", question_field, "query") if k not in item]
            if missing:
                raise DataError(f"missing {', '.join(missing)}")
            schema = schemas.get(item["db_id"])
            if schema is None:
                raise DataError(f"unknown db_id {item['db_id']!r}")
            tabs, cols = gold_links(str(item["query"]), schema)
        except DataError as err:
            if strict:
                raise DataError(f"{questions} entry {i}: {err}") from None
            errors.append((i, str(err)))
            continue
        kind = str(item["type"]) if "type" in item else None
        examples.append(
            LinkingExample(
                i, schema.db_id, str(item[question_field]), str(item["query"]), tabs, cols, kind
            )
        )
    return LinkingData(examples, schemas, errors, str(questions))


SPLITS: dict[str, tuple[str, str, str]] = {
    # split: (questions file, tables file, question field), relative to the root
    "train": ("spider-syn/train_spider.json", "spider-syn/tables.json", "SpiderQuestion"),
    "dev": ("spider-syn/dev.json", "spider-syn/tables.json", "SpiderQuestion"),
    "syn": ("spider-syn/dev.json", "spider-syn/tables.json", "SpiderSynQuestion"),
    "dk": ("spider-dk/Spider-DK.json", "spider-dk/tables.json", "question"),
}


def load_spider_splits(
    root: str | Path, splits: Sequence[str] = ("train", "dev", "syn", "dk")
) -> dict[str, LinkingData]:
    """Spider train, dev, Spider-Syn (the dev questions with synonyms) and Spider-DK from a
    folder laid out as the authors publish them (``spider-syn/``, ``spider-dk/``)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Spider root {str(root)!r} is not a folder (data.args.root: the folder holding "
            "spider-syn/ and spider-dk/)"
        )
    out = {}
    for name in splits:
        if name not in SPLITS:
            raise DataError(f"unknown Spider split {name!r} (known: {', '.join(SPLITS)})")
        q, t, f = SPLITS[name]
        out[name] = load_spider(root / q, root / t, f)
    return out


@DATASETS.register("spider_linking")
def load_spider_linking(
    root: str | Path, splits: Sequence[str] = ("train", "dev", "syn", "dk")
) -> dict[str, LinkingData]:
    """Spider train and dev, Spider-Syn and Spider-DK as schema-linking splits (a folder with
    the authors' ``spider-syn/`` and ``spider-dk/``)."""
    return load_spider_splits(root, splits)
