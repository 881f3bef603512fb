"""The reproduction study: its resume decision (a row whose run directory holds an interrupted or
failed run resumes it; only a completed run counts as done), which rows it runs, and the table's
figures over seeds."""

import json
import sys

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "experiments" / "reproduction"))
import study  # noqa: E402  (experiments/ is no package)
import table  # noqa: E402


def test_only_a_completed_run_counts_as_done(tmp_path):
    assert not study.completed(tmp_path)
    for status, done in (("failed", False), ("running", False), ("completed", True)):
        (tmp_path / "results.json").write_text(json.dumps({"status": status}))
        assert study.completed(tmp_path) is done, status


def test_rows_to_run_skip_the_done_ones_and_keep_to_the_filters():
    plan = study.plan()
    done = {r.key for r in plan if r.seed == 0}
    todo = study.to_run(done)
    assert todo == [r for r in plan if r.seed != 0] and todo
    assert study.to_run(set()) == plan
    seed_one = study.to_run(done, models=["mobilenet"], seeds=[1])
    assert seed_one and all(r.model == "mobilenet" and r.seed == 1 for r in seed_one)
    assert {r.recipe for r in seed_one} == {
        "ours",
        "paper",
        "ours_aug_clean",
        "ours_aug_clean_half",
        "ours_bf16_cos",
    }
    assert study.to_run(done, models=["mobilenet"], recipes=["paper"], seeds=[1, 2]) == [
        r for r in plan if r.seed in (1, 2) and r.recipe == "paper"
    ]
    assert study.to_run(done, seeds=[0]) == []
    first_active = study.to_run(set(), models=["resnet101"], modes=["active"])
    assert [(r.taps, r.mode) for r in first_active] == [
        ("middle", "active"),
        ("entry", "active"),
        ("output", "active"),
    ]


def test_a_recorded_run_is_done_only_for_its_own_number_of_epochs(tmp_path, monkeypatch):
    short, long = [
        r for r in study.plan() if r.recipe == "ours_aug_clean" and r.mode == "off" and r.seed == 0
    ]
    assert (short.epochs, long.epochs) == (15, 25) and short.key != long.key
    run_dir = tmp_path / long.name
    run_dir.mkdir()
    results = {
        "epochs_trained": 25,
        "audited": {"test_acc": 0.8, "train_acc": 0.82},
        "membership": {"paper": {"loss": {"auc": 0.51}}},
    }
    (run_dir / "results.json").write_text(json.dumps(results))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    line = study.record(long, run_dir, wall_s=60.0)
    assert line["threads"] == "2"  # the table takes only such a run's minutes as a timing
    assert study.key_of({k: str(v) for k, v in line.items()}) == long.key
    csv_path = tmp_path / "study.csv"
    with csv_path.open("w", newline="") as f:
        writer = study.csv.DictWriter(f, fieldnames=study.COLUMNS)
        writer.writeheader()
        writer.writerow(line)
    done = study.done_keys(csv_path)
    todo = study.to_run(done, recipes=["ours_aug_clean"], modes=["off"], seeds=[0])
    assert todo == [short]


def test_the_table_gives_mean_deviation_and_each_seed_of_a_configuration_run_more_than_once():
    def row(seed, acc, auc=""):
        key = {"model": "mobilenet", "mode": "active", "head": "light", "taps": "middle"}
        return {**key, "recipe": "ours", "seed": str(seed), "aud_test_acc": acc,
                "mint_auc_paper": auc, "tpr1_paper": "", "epochs": "10"}  # fmt: skip

    once = {**row(0, "0.8"), "model": "vit"}
    longer = {**row(2, "0.79"), "epochs": "25"}  # another configuration, not a third seed
    lines = table.seeds([row(1, "0.7411", "0.8451"), once, longer, row(0, "0.7560", "0.8479")])
    assert lines == [
        "- mobilenet active light middle ours 10ep (n = 2 seeds): "
        "aud_test_acc 0.749 ± 0.011 (0.756, 0.741), mint_auc_paper 0.847 ± 0.002 (0.848, 0.845)"
    ]


def test_the_plot_draws_the_runs_done_and_leaves_the_rest_out(tmp_path):
    from PIL import Image

    def row(model, mode, taps, auc, acc, seed="0", recipe="ours"):
        head = "-" if mode == "off" else "light"
        return {"model": model, "mode": mode, "taps": taps, "head": head, "seed": seed,
                "recipe": recipe, "mint_auc_paper": auc, "mint_auc_paper_ci": "",
                "loss_auc_paper": "0.51", "aud_test_acc": acc}  # fmt: skip

    rows = [
        row("vit", "off", "-", "", "0.79"),
        row("vit", "active", "entry", "0.61", "0.80"),
        row("vit", "passive", "middle", "0.52", "0.79"),
        {**row("vit", "active", "entry", "0.99", "0.99"), "seed": "1"},  # seed 0 only
        row("resnet50", "off", "-", "", "0.84"),
        {**row("resnet50", "active", "middle", "0.9", "0.5"), "recipe": "paper"},  # ours only
    ]
    path = tmp_path / "study.png"
    drawn = table.plot(rows, path)
    assert drawn == {
        "passive, middle": {"vit": 0.52},
        "aMINT, entry": {"vit": 0.61},
        "LOSS attack": {"vit": 0.51, "resnet50": 0.51},
        "accuracy, mint=off": {"vit": 0.79, "resnet50": 0.84},
    }
    assert Image.open(path).size == (1536, 552)


def test_the_targets_judge_every_recipe_run_both_with_and_without_amint():
    def row(mode, acc, recipe="ours", epochs="10", seed="0", model="mobilenet", auc="0.92"):
        taps, head = ("-", "-") if mode == "off" else ("middle", "light")
        return {"model": model, "mode": mode, "taps": taps, "head": head, "seed": seed,
                "recipe": recipe, "epochs": epochs, "aud_test_acc": acc,
                "mint_auc_paper": "" if mode == "off" else auc, "mint_auc_paper_ci": "",
                "loss_auc_paper": "0.51"}  # fmt: skip

    rows = [
        row("off", "0.766"),
        row("active", "0.756"),
        row("off", "0.821", "ours_aug_clean", "25"),
        row("active", "0.803", "ours_aug_clean", "25"),  # within 2 points, above 0.80
        row("off", "0.787", "ours_aug_clean", "15"),  # no aMINT run beside it: no line
        row("active", "0.99", "ours_cos", "20", seed="1"),  # seed 0 only
        row("off", "0.81", "ours_cos", "20"),
        row("active", "0.785", "ours_cos", "20"),  # 2.5 points below
        row("passive", "0.81", "ours_cos", "20", auc="0.64"),  # aMINT's 0.92 beats it
        row("active", "0.805", "ours_aug_clean_half", "25"),  # beside ours_aug_clean's off
    ]
    lines = table.targets(rows)[2:]
    assert [line.split(" | ")[:5] for line in lines] == [
        ["| mobilenet", "ours, 10 epochs", "0.766", "0.756", "**no**"],
        ["| mobilenet", "ours_aug_clean, 25 epochs", "0.821", "0.803", "yes"],
        ["| mobilenet", "ours_cos, 20 epochs", "0.810", "0.785", "**no**"],
        ["| mobilenet", "ours_aug_clean_half, 25 epochs", "0.821", "0.805", "yes"],
    ]
    # The passive head and the verdict where one was trained at the recipe, "-" elsewhere.
    assert [line.split(" | ")[6:] for line in lines] == [
        ["-", "0.510", "- |"],
        ["-", "0.510", "- |"],
        ["0.640", "0.510", "yes |"],
        ["-", "0.510", "- |"],
    ]


def test_recipe_pairs_set_each_recipes_off_beside_its_active_with_the_paper_head_for_paper():
    def row(mode, recipe, head="light", taps="middle", seed="0"):
        head, taps = ("-", "-") if mode == "off" else (head, taps)
        return {"model": "mobilenet", "mode": mode, "taps": taps, "head": head, "seed": seed,
                "recipe": recipe, "epochs": "10"}  # fmt: skip

    rows = [
        row("off", "ours"),
        row("active", "ours"),  # `ours` has a table of its own
        row("off", "paper"),
        row("active", "paper", head="paper", taps="entry"),  # not the middle tap
        row("active", "paper", head="paper"),
        row("off", "ours_stem"),
        row("active", "ours_stem"),
        row("active", "ours_stem", seed="1"),  # seed 0 only
        row("off", "ours_aug"),  # no active beside it
    ]
    pairs = table.recipe_pairs(rows)
    assert [(recipe, off, active) for recipe, _, off, active, _ in pairs["mobilenet"]] == [
        ("paper", rows[2], rows[4]),
        ("ours_stem", rows[5], rows[6]),
    ]


def test_the_paper_recipe_table_compares_the_runs_with_a_head_with_the_papers_code():
    def row(mode, acc, auc="", head="paper", recipe="paper", wall_s="600", threads="2"):
        return {"model": "mobilenet", "mode": mode, "taps": "middle" if head != "-" else "-",
                "head": head, "seed": "0", "recipe": recipe, "aud_test_acc": acc,
                "mint_auc_paper": auc, "wall_s": wall_s, "epochs": "10",
                "threads": threads}  # fmt: skip

    lines = table.paper_recipe(
        [
            row("off", "0.6348", head="-"),
            row("active", "0.5642", "0.9724"),
            row("active", "0.80", "0.85", head="light", recipe="ours"),  # not the paper's head
            row("active", "0.75", "0.95", recipe="ours_bf16", wall_s="1200"),
            # A background run (one thread beside another) or one from before the column: its
            # minutes are not the paper code's conditions.
            row("active", "0.75", "0.95", recipe="ours_bf16_cos", wall_s="900", threads="1"),
            row("active", "0.75", "0.95", recipe="ours_bf16_w2", wall_s="900", threads=None),
        ]
    )
    assert lines[2:] == [
        "| mobilenet | middle | paper | 0 | 0.972 | yes | 0.564 | **no** | 10.0 | yes |",
        "| mobilenet | middle | ours_bf16 | 0 | 0.950 | yes | 0.750 | yes | 20.0 | **no** |",
        "| mobilenet | middle | ours_bf16_cos | 0 | 0.950 | yes | 0.750 | yes | 15.0 | - |",
        "| mobilenet | middle | ours_bf16_w2 | 0 | 0.950 | yes | 0.750 | yes | 15.0 | - |",
    ]
