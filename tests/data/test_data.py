"""Data loading from each file format and HF dataset directories, chat-template rendering, SFT
pair layout, and the pure epoch order / host sharding."""

import csv
import gzip
import json
import time

import numpy as np
import pytest

from dllm_jax.data.records import (
    batch_rows,
    encode_prompts,
    encode_sft,
    epoch_order,
    host_shard,
    load_records,
    render_prompt,
)
from dllm_jax.tasks import CharTokenizer

ROWS = [{"q": "what is two", "a": "four", "n": 1},
        {"q": "what is four ?", "a": "two two", "n": 2},
        {"q": "two", "a": "four", "n": 3}]
WORDS = ["<pad>", "<bos>", "<eos>", "<mask>", "<unk>", "system", "user", ":", "assistant",
         "what", "is", "two", "four", "?", "be", "brief"]


@pytest.fixture(scope="module")
def chat_tok():
    """A word-level HF tokenizer that adds BOS and has a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                      special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = ("<bos> {% for m in messages %}{{ m['role'] }} : {{ m['content'] }} "
                         "{% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")
    return tok


def _write(path, fmt, rows):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "jsonl.gz", "csv", "parquet"])
def test_each_file_format(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    _write(path, fmt, ROWS)
    recs = load_records(str(path), fields=("q", "a"))
    want = [{**r, "n": str(r["n"])} for r in ROWS] if fmt == "csv" else ROWS
    assert recs == want
    assert load_records(path, limit=2) == want[:2]
    with pytest.raises(ValueError, match=r"has no field 'question' \(record 0\); fields: "
                                         r"\['a', 'n', 'q'\]"):
        load_records(str(path), fields=("question",))


def test_hf_dataset_directory_and_unavailable_name(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert load_records(tmp_path / "ds", fields=("q",)) == ROWS
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(
        str(tmp_path / "dd"))
    assert load_records(tmp_path / "dd", split="test") == ROWS[:1]
    with pytest.raises(ValueError, match="no split 'train'"):
        load_records(tmp_path / "dd")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"cannot load dataset 'nobody-here/no-such-set'"):
        load_records("nobody-here/no-such-set")  # offline in tests: fails, as one line
    assert time.perf_counter() - t0 < 30


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_records(str(tmp_path / "none.jsonl"))
    with pytest.raises(ValueError, match="does not exist"):
        load_records("./nowhere")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"unknown data file type '.txt'"):
        load_records(str(tmp_path / "x.txt"))
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        load_records(tmp_path / "e.jsonl")
    (tmp_path / "b.jsonl").write_text('{"q": 1}\n{"q": \n')
    with pytest.raises(ValueError, match=r"b.jsonl:2: not a JSON line"):
        load_records(tmp_path / "b.jsonl")
    (tmp_path / "l.jsonl").write_text('{"q": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match="record 1 is not a JSON object"):
        load_records(tmp_path / "l.jsonl")
    (tmp_path / "p.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="cannot read Parquet"):
        load_records(tmp_path / "p.parquet")
    (tmp_path / "f.jsonl").write_text('{"q": 1, "a": 2}\n{"q": 3}\n')
    with pytest.raises(ValueError, match=r"no field 'a' \(record 1\)"):
        load_records(tmp_path / "f.jsonl", fields=("q", "a"))


def test_chat_template_and_sft_layout(chat_tok):
    ids = render_prompt(chat_tok, "what is two")
    assert chat_tok.convert_ids_to_tokens(ids) == ["<bos>", "user", ":", "what", "is", "two",
                                                   "assistant", ":"]
    with_system = render_prompt(chat_tok, "two", system_prompt="be brief")
    assert chat_tok.convert_ids_to_tokens(with_system)[1:5] == ["system", ":", "be", "brief"]
    plain = render_prompt(chat_tok, "what is two", chat_template=False)
    assert chat_tok.convert_ids_to_tokens(plain) == ["<bos>", "what", "is", "two"]

    enc = encode_sft(ROWS, chat_tok, prompt_field="q", answer_field="a")
    tokens, resp, att = enc["tokens"], enc["response_mask"], enc["attention_mask"]
    eos, pad = chat_tok.eos_token_id, chat_tok.pad_token_id
    # Longest rendered prompt: <bos> user : what is four ? assistant : (9); longest answer
    # "two two" + EOS (3).
    assert tokens.shape == resp.shape == att.shape == (3, 12)
    assert all(a.dtype == np.int32 for a in (tokens, resp, att))
    assert (resp[:, :9] == 0).all() and (resp[:, 9:] == 1).all()
    row0 = chat_tok.convert_ids_to_tokens(tokens[0].tolist())
    assert row0 == ["<pad>"] + ["<bos>", "user", ":", "what", "is", "two", "assistant", ":"] + [
        "four", "<eos>", "<eos>"]  # no BOS before the answer, EOS then EOS padding
    assert att[0].tolist() == [0] + [1] * 11 and att[1].tolist() == [1] * 12
    assert chat_tok.convert_ids_to_tokens(tokens[1, 9:].tolist()) == ["two", "two", "<eos>"]
    assert (tokens[tokens == pad].size == 1 + 3) and (tokens[:, -1] == eos).all()

    short = encode_sft(ROWS, chat_tok, prompt_field="q", answer_field="a", max_prompt_length=3,
                       max_answer_length=2)
    assert short["tokens"].shape == (3, 5)
    assert chat_tok.convert_ids_to_tokens(short["tokens"][1].tolist()) == [
        "?", "assistant", ":", "two", "<eos>"]  # prompt keeps its end, answer its start
    with pytest.raises(ValueError, match="record 0 has no field 'answer'"):
        encode_sft(ROWS, chat_tok, prompt_field="q")
    with pytest.raises(ValueError, match="no records"):
        encode_sft([], chat_tok)

    pr = encode_prompts(ROWS, chat_tok, prompt_field="q", buckets=(16,))
    assert pr["prompt_BP"].shape == (3, 16) and pr["attention_mask_BP"].sum(1).tolist() == [
        8, 9, 6]


def test_sft_with_char_tokenizer():
    tok = CharTokenizer()
    enc = encode_sft([{"prompt": "12+3=", "answer": "15"}, {"prompt": "1+1=", "answer": "2"}],
                     tok)
    assert enc["tokens"].tolist() == [tok.encode("12+3=") + tok.encode("15") + [tok.eos_id],
                                      [tok.pad_id] + tok.encode("1+1=") + tok.encode("2") +
                                      [tok.eos_id, tok.eos_id]]
    assert enc["response_mask"].tolist() == [[0] * 5 + [1] * 3] * 2


def test_epoch_order_batches_and_host_shards():
    a = epoch_order(50, 3, 2)
    assert (a == epoch_order(50, 3, 2)).all() and sorted(a.tolist()) == list(range(50))
    assert (a != epoch_order(50, 3, 1)).any() and (a != epoch_order(50, 4, 2)).any()
    assert len(epoch_order(0, 0, 0)) == 0
    for bad in (dict(num_records=-1, seed=0, epoch=0), dict(num_records=5, seed=-2, epoch=0),
                dict(num_records=5, seed=0, epoch=1.5)):
        with pytest.raises(ValueError, match="non-negative int"):
            epoch_order(**bad)
    # 10 records, batch 4: two batches per epoch (2 records dropped), epochs continue the steps.
    assert (batch_rows(10, 4, 0, 0) == epoch_order(10, 0, 0)[:4]).all()
    assert (batch_rows(10, 4, 0, 3) == epoch_order(10, 0, 1)[4:8]).all()
    seen = np.concatenate([batch_rows(10, 4, 0, s) for s in (0, 1)])
    assert len(set(seen.tolist())) == 8  # no repeats within an epoch
    with pytest.raises(ValueError, match="larger than the dataset"):
        batch_rows(3, 4, 0, 0)
    rows = batch_rows(1000, 64, 7, 5)
    parts = [host_shard(rows, i, 4) for i in range(4)]
    assert [len(p) for p in parts] == [16] * 4
    assert (np.concatenate(parts) == rows).all()  # disjoint, complete, in order
    assert host_shard(list(range(6)), 1, 3).tolist() == [2, 3]
    with pytest.raises(ValueError, match="not divisible by 3 hosts"):
        host_shard(rows, 0, 3)
    with pytest.raises(ValueError, match=r"process_index 4 is not in \[0, 4\)"):
        host_shard(rows, 4, 4)
