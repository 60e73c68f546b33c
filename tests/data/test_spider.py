"""The Spider-format loader and the gold schema links derived from SQL: hand-checked
queries (joins, aliases, nested queries, ``*``, set operations, ``ORDER BY`` aliases), every
kind of bad input reported with its index, and the real Spider-Syn / Spider-DK files."""

import json
from pathlib import Path

import pytest

from alignfuse.data.spider import LinkingData, Schema, gold_links, load_spider, load_spider_splits
from alignfuse.errors import DataError
from helpers import (
    H_PET,
    H_STU,
    HAS_PET,
    P_AGE,
    P_ID,
    P_OWNER,
    PET,
    PETS,
    S_AGE,
    S_ID,
    S_NAME,
    STUDENT,
)

SPIDER = Path(__file__).resolve().parents[3] / "shared" / "data" / "spider"


@pytest.fixture(scope="module")
def schema():
    return Schema.from_json(PETS)


def test_schema_drops_star_and_renumbers(schema):
    assert schema.n_tables == 3 and schema.n_columns == 8
    assert schema.column_names[S_ID] == "student id" and schema.column_tables[P_AGE] == PET
    assert schema.primary_keys == {S_ID, P_ID}
    assert schema.foreign_keys == ((P_OWNER, S_ID), (H_STU, S_ID), (H_PET, P_ID))
    assert schema.table_columns(HAS_PET) == [H_STU, H_PET]


@pytest.mark.parametrize(
    ("query", "tables", "columns"),
    [
        # count(*) links the table and no column
        ("SELECT count(*) FROM pet", {PET}, set()),
        # a join through aliases: every column of every clause, join keys included
        (
            "SELECT T1.name FROM student AS T1 JOIN pet AS T2 ON T1.stuid = T2.ownerid "
            "WHERE T2.pet_age > 2",
            {STUDENT, PET},
            {S_NAME, S_ID, P_OWNER, P_AGE},
        ),
        # unqualified columns of a join resolve to their own tables
        (
            "SELECT name, pet_age FROM student JOIN pet ON stuid = ownerid",
            {STUDENT, PET},
            {S_NAME, P_AGE, S_ID, P_OWNER},
        ),
        # a nested query's table and columns count
        (
            "SELECT name FROM student WHERE stuid NOT IN (SELECT ownerid FROM pet)",
            {STUDENT, PET},
            {S_NAME, S_ID, P_OWNER},
        ),
        # the same alias in the nested query names another table
        (
            "SELECT T1.name FROM student AS T1 WHERE T1.stuid IN "
            "(SELECT T1.stuid FROM has_pet AS T1 JOIN pet AS T2 ON T1.petid = T2.petid "
            "WHERE T2.pet_age > 1)",
            {STUDENT, HAS_PET, PET},
            {S_NAME, S_ID, H_STU, H_PET, P_ID, P_AGE},
        ),
        # set operations: both sides
        (
            "SELECT stuid FROM student EXCEPT SELECT ownerid FROM pet",
            {STUDENT, PET},
            {S_ID, P_OWNER},
        ),
        (
            "SELECT name FROM student WHERE age > 20 INTERSECT "
            "SELECT name FROM student WHERE age < 30",
            {STUDENT},
            {S_NAME, S_AGE},
        ),
        # an output alias in ORDER BY is not a column
        (
            "SELECT name, count(*) AS n FROM student GROUP BY name ORDER BY n DESC LIMIT 1",
            {STUDENT},
            {S_NAME},
        ),
        # identifiers in any case; "Bob" is a string, not a column
        ('SELECT Name FROM STUDENT WHERE NAME = "Bob"', {STUDENT}, {S_NAME}),
        # a derived table: the inner columns count, the outer reference to it does not
        (
            "SELECT max(c) FROM (SELECT ownerid, count(*) AS c FROM pet GROUP BY ownerid)",
            {PET},
            {P_OWNER},
        ),
    ],
)
def test_gold_links_of_hand_checked_queries(schema, query, tables, columns):
    got_t, got_c = gold_links(query, schema)
    assert got_t == tables, [schema.tables[t] for t in got_t]
    assert got_c == columns, [
        f"{schema.tables[schema.column_tables[c]]}.{schema.column_names[c]}" for c in got_c
    ]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("SELECT name FROM teacher", "table 'teacher' is not in schema 'pets'"),
        ("SELECT salary FROM student", "salary"),
        ("SELECT name FROM student WHERE", "of 'pets'"),
        ("SELECT T1.name T1.age FROM student AS T1", "of 'pets'"),
    ],
)
def test_bad_queries_are_named(schema, query, message):
    with pytest.raises(DataError, match=message):
        gold_links(query, schema)


def _files(tmp_path, questions, tables=(PETS,)):
    q, t = tmp_path / "questions.json", tmp_path / "tables.json"
    q.write_text(json.dumps(questions))
    t.write_text(json.dumps(list(tables)))
    return q, t


def test_loader_reports_every_bad_question_with_its_index(tmp_path):
    rows = [
        {
            "db_id": "pets",
            "question": "How many pets?",
            "query": "SELECT count(*) FROM pet",
            "type": 0,
        },
        {"db_id": "zoo", "question": "x", "query": "SELECT 1"},
        {"db_id": "pets", "question": "x", "query": "SELECT salary FROM student"},
        {"db_id": "pets", "question": "x", "query": "SELEC name FROM student"},
        {"db_id": "pets", "query": "SELECT name FROM student"},
        "not a mapping",
        {"db_id": "pets", "question": "Names?", "query": "SELECT name FROM student", "type": 23},
    ]
    data = load_spider(*_files(tmp_path, rows))
    assert isinstance(data, LinkingData) and len(data) == 2
    assert [e.index for e in data.examples] == [0, 6]
    assert [e.kind for e in data.examples] == ["0", "23"]
    assert data.examples[1].columns == {S_NAME}
    assert [i for i, _ in data.errors] == [1, 2, 3, 4, 5]
    messages = dict(data.errors)
    assert "unknown db_id 'zoo'" in messages[1]
    assert "salary" in messages[2]
    assert "missing question" in messages[4]
    assert "not a mapping" in messages[5]
    with pytest.raises(DataError, match="questions.json entry 1: unknown db_id 'zoo'"):
        load_spider(*_files(tmp_path, rows), strict=True)


def test_loader_reads_the_question_field_asked_for(tmp_path):
    rows = [
        {
            "db_id": "pets",
            "SpiderQuestion": "How many pets?",
            "SpiderSynQuestion": "How many animals?",
            "query": "SELECT count(*) FROM pet",
        }
    ]
    q, t = _files(tmp_path, rows)
    assert load_spider(q, t).examples[0].question == "How many pets?"
    assert load_spider(q, t, "SpiderSynQuestion").examples[0].question == "How many animals?"
    with pytest.raises(DataError, match="question_field must be one of"):
        load_spider(q, t, "Question")


def test_malformed_files_are_named(tmp_path):
    q, t = _files(tmp_path, [])
    t.write_text("[{trunc")
    with pytest.raises(DataError, match="tables.json is not valid JSON"):
        load_spider(q, t)
    t.write_text(json.dumps([{"db_id": "x"}]))
    with pytest.raises(DataError, match="schema 'x' is not in the Spider format"):
        load_spider(q, t)
    t.write_text(json.dumps([PETS]))
    with pytest.raises(DataError, match="does not exist"):
        load_spider(tmp_path / "nope.json", t)
    with pytest.raises(DataError, match="is not a folder"):
        load_spider_splits(tmp_path / "nope")


@pytest.mark.skipif(not SPIDER.is_dir(), reason=f"the Spider data is not at {SPIDER}")
def test_the_real_files_load_with_two_named_errors():
    data = load_spider_splits(SPIDER)
    assert {k: len(v) for k, v in data.items()} == {
        "train": 6999,
        "dev": 1034,
        "syn": 1034,
        "dk": 534,
    }
    # the two queries of the published files that do not match their schemas
    assert [i for i, _ in data["train"].errors] == [3153]
    assert "ref_company_types" in data["train"].errors[0][1]
    assert [i for i, _ in data["dk"].errors] == [76]
    dev, syn = data["dev"].examples, data["syn"].examples
    assert dev[0].question == "How many singers do we have?"
    assert syn[0].question == "How many vocalists do we have?"
    assert [(e.tables, e.columns) for e in dev] == [(e.tables, e.columns) for e in syn]
    schema = data["dev"].schemas[dev[2].db_id]
    assert [schema.column_names[c] for c in sorted(dev[2].columns)] == ["name", "country", "age"]
    assert {e.kind for e in data["dk"].examples} == {"0", "1", "2", "3", "4", "5", "23", "34"}
    assert all(e.tables for v in data.values() for e in v.examples)
