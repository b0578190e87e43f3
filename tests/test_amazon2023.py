"""The Amazon Reviews 2023 converter, on a small sample written in the public jsonl layout."""

import gzip
import json
import os

import pandas as pd
import pytest
from recbole.data import data_preparation

from recbole_llmsrec.config import Config
from recbole_llmsrec.data import create_dataset
from recbole_llmsrec.data.amazon2023 import k_core, main, paper_refilter
from recbole_llmsrec.llm.text import read_item_text

DAY_MS = 86_400_000
START_MS = 1_600_000_000_000


def review(user, item, day, rating=5.0):
    return {"rating": rating, "title": "great", "text": "fine", "images": [], "asin": item + "-v",
            "parent_asin": item, "user_id": user, "timestamp": START_MS + day * DAY_MS, "helpful_vote": 0,
            "verified_purchase": True}


def write_sample(folder):
    """7 users who each review items A..G in order, plus what the filters must remove."""
    reviews = []
    for u in range(7):
        for k, item in enumerate("ABCDEFG"):
            reviews.append(review(f"U{u}", item, day=10 * u + k))
    reviews.append(review("U0", "C", day=500, rating=1.0))  # the same pair again, later: dropped
    reviews += [review(f"U{u}", "R", day=300 + u) for u in range(3)]  # 3 reviews: not 5-core
    # U8 has 4 reviews (not 5-core); item H has 5, one of them U8's, so H falls in the second round
    reviews += [review("U8", item, day=400 + k) for k, item in enumerate("HABC")]
    reviews += [review(f"U{u}", "H", day=200 + u) for u in range(4)]
    path = os.path.join(folder, "Industrial_and_Scientific.jsonl.gz")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in reviews:
            f.write(json.dumps(row) + "\n")
    meta = [{"main_category": "Industrial", "title": f"Tool {item}", "description": [f"About {item}.", "More."],
             "parent_asin": item, "price": None} for item in "ABCDEFGHR" if item != "E"]
    meta[0]["title"] = "Tape\tmeasure\nwith a break"  # A: tabs and line breaks in a title
    meta[1]["description"] = []  # B: no description
    meta_path = os.path.join(folder, "meta_Industrial_and_Scientific.jsonl")
    with open(meta_path, "w", encoding="utf-8") as f:
        for row in meta:
            f.write(json.dumps(row) + "\n")
    return path, meta_path


def test_converter_writes_filtered_atomic_files_recbole_loads(tmp_path, monkeypatch):
    reviews, meta = write_sample(str(tmp_path))
    summary = main([f"--reviews={reviews}", f"--meta={meta}", "--name=Sci", f"--data_path={tmp_path / 'data'}"])
    folder = tmp_path / "data" / "Sci"
    inter = pd.read_csv(folder / "Sci.inter", sep="\t", dtype=str)
    assert list(inter.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    # R (3 reviews), U8 (4) and then H (4 once U8 is gone) are filtered; the repeated U0-C is one, the earliest
    assert sorted(inter["user_id:token"].unique()) == [f"U{u}" for u in range(7)]
    assert sorted(inter["item_id:token"].unique()) == list("ABCDEFG")
    assert len(inter) == 49 and summary["users"] == 7 and summary["items"] == 7 and summary["interactions"] == 49
    u0_c = inter[(inter["user_id:token"] == "U0") & (inter["item_id:token"] == "C")]
    assert u0_c["timestamp:float"].astype(int).tolist() == [START_MS + 2 * DAY_MS]
    assert u0_c["rating:float"].astype(float).tolist() == [5.0]
    ordered = inter.assign(t=inter["timestamp:float"].astype(int))
    assert ordered.equals(ordered.sort_values(["user_id:token", "t"], kind="stable"))
    assert summary["5core"] == {"users": 7, "items": 7, "interactions": 49} and summary["user_fraction"] == 1.0

    item = pd.read_csv(folder / "Sci.item", sep="\t", dtype=str, keep_default_na=False)
    assert list(item.columns) == ["item_id:token", "title:token_seq", "description:token_seq"]
    text = dict(zip(item["item_id:token"], item["title:token_seq"]))
    assert text["A"] == "Tape measure with a break" and text["E"] == "" and text["C"] == "Tool C"
    assert dict(zip(item["item_id:token"], item["description:token_seq"]))["C"] == "About C."
    assert summary["items_without_title"] == 1

    # RecBole loads it with the written settings; prompts get the raw titles
    monkeypatch.chdir(tmp_path)
    config = Config(model="SASRec", dataset="Sci", config_file_list=[str(folder / "Sci.yaml")],
                    config_dict={"data_path": str(tmp_path / "data"), "state": "WARNING"})
    assert config["timestamp_unit"] == "ms" and config["item_text_fields"] == ["title"]
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == 7 and dataset.item_num - 1 == 7 and len(dataset.inter_feat) == 49
    texts = read_item_text(config, dataset)
    assert texts[dataset.token2id("item_id", "A")] == "Tape measure with a break"
    assert texts[dataset.token2id("item_id", "E")] == config["item_text_placeholder"]
    train, valid, test = data_preparation(config, dataset)
    assert len(test._dataset) == 7 and len(valid._dataset) == 7


def test_single_refilter_and_k_core():
    # 12 users x items A..H, plus item Z that only users 0..3 reach (4 interactions: dropped by the re-filter)
    rows = [(f"U{u:02d}", item, 10 * u + k) for u in range(12) for k, item in enumerate("ABCDEFGH")]
    rows += [(f"U{u:02d}", "Z", 10 * u - 1) for u in range(4)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).sort_values(["user_id", "timestamp"])
    kept, incomplete = paper_refilter(frame)
    assert "Z" not in set(kept["item_id"]) and len(kept) == 96 and incomplete == 0
    # a user whose test item is rare keeps its training part but lacks a test target
    rare_test = pd.concat([frame, pd.DataFrame([("U00", "Q", 10_000)], columns=frame.columns)])
    kept, incomplete = paper_refilter(rare_test)
    assert incomplete == 1 and kept[kept["user_id"] == "U00"]["item_id"].tolist() == list("ABCDEFGH")
    # users with at most 4 training interactions of kept items go (the paper's "> 4"), 5 are enough
    kept, _ = paper_refilter(frame[~((frame["user_id"] == "U05") & frame["item_id"].isin(["A", "B"]))])
    assert "U05" not in set(kept["user_id"])
    kept, _ = paper_refilter(frame[~((frame["user_id"] == "U05") & frame["item_id"].isin(["A"]))])
    assert "U05" in set(kept["user_id"])
    # k-core runs until nothing changes
    chain = pd.DataFrame([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("c", "x")], columns=["user_id", "item_id"])
    assert len(k_core(chain, 2)) == 4 and k_core(chain, 3).empty


def test_user_sample_is_seeded(tmp_path):
    reviews = tmp_path / "Electronics.jsonl"
    with open(reviews, "w") as f:
        for u in range(20):
            for k, item in enumerate("ABCDEFGH"):
                f.write(json.dumps(review(f"U{u:02d}", item, day=10 * u + k)) + "\n")
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps({"parent_asin": item, "title": item}) + "\n" for item in "ABCDEFGH"))

    def sampled(seed, name):
        main([f"--reviews={reviews}", f"--meta={meta}", f"--name={name}", f"--data_path={tmp_path}",
              "--user_fraction=0.5", f"--seed={seed}"])
        return set(pd.read_csv(tmp_path / name / f"{name}.inter", sep="\t", dtype=str)["user_id:token"])

    first, again, other = sampled(0, "a"), sampled(0, "b"), sampled(1, "c")
    assert len(first) == 10 and first == again and other != first


def test_user_fraction_defaults_to_the_papers_and_files_must_exist(tmp_path, capsys):
    reviews, meta = write_sample(str(tmp_path))
    movies = tmp_path / "Movies_and_TV.jsonl.gz"
    os.rename(reviews, movies)
    with pytest.raises(ValueError, match="no interaction is left"):  # 5% of 7 users cannot keep 5-core items
        main([f"--reviews={movies}", f"--meta={meta}", "--name=M", f"--data_path={tmp_path}"])
    assert "0.05: the paper code's share for Movies_and_TV" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        main([f"--reviews={tmp_path / 'nope.jsonl'}", f"--meta={meta}", "--name=M", f"--data_path={tmp_path}"])
