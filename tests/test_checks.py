"""Check kinds on the toy model: each passes a good edit and fails a bad one; the statistics cover
at their nominal rate; suites are validated naming the field; the same suites run on a random Llama."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from html.parser import HTMLParser

import pytest
import torch

from editors import LowRank, Steering, Surgeon
from editors.covariance import key_covariance
from editors.memit import MemitHyperParams, compute_memit
from editors.rome import RomeHyperParams, compute_rome
from editors.steering import derive_steering
from editors.toyworld import TOY_MODEL_DIR, reference_corpus
from editors.toyworld.counterfact import batch_cases, edit_cases, relation_prompts
from editors.toyworld.evaluate import induction_sequences, sentiment_pairs
from editors.toyworld.world import TEMPLATES
from service.checks import KINDS, CheckRunner, Suite, default_toy_suite
from service.checks.stats import mean, ratio_of_sums
from service.cli.check_report import find_browser
from service.cli.checks import inline_item_files
from service.db.migrate import upgrade
from service.hosting import ModelHost
from service.registry import InvalidArgument, Registry
from tests.test_service import run_checks, served  # noqa: F401  (the gRPC server fixture)


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> ModelHost:
    url = f"sqlite:///{tmp_path_factory.mktemp('checks') / 'registry.db'}"
    upgrade("head", url)
    host = ModelHost("toy", str(TOY_MODEL_DIR), Registry(url))
    yield host
    host.close()


@pytest.fixture(scope="module")
def edits(host, toy, induction_ablation) -> dict[str, list]:
    """A good fact edit, a fact edit that claims a target it does not produce, the same edit at an
    absurd strength, a MEMIT batch of four capitals (its two layer edits), an induction-head
    ablation, a derived steering vector and one at scale 1000."""
    model, tokenizer, world = toy
    surgeon = Surgeon(model)
    case = edit_cases(world, 1, seed=8)[0]  # a capital: the record "X : capital , …" asks it too
    covariance = key_covariance(surgeon, tokenizer, reference_corpus(), 0)[0]
    keep = relation_prompts(world)  # as the toy model ships them (edit_hparams.json)
    rome_hparams = RomeHyperParams(keep_prompts=keep)
    rome = compute_rome(surgeon, tokenizer, case.request, covariance, reference_corpus(), rome_hparams).edit
    batch = [c.request for c in batch_cases(world, 4, seed=4)]
    memit_hparams = MemitHyperParams(keep_prompts=keep)
    memit = compute_memit(surgeon, tokenizer, batch, {0: covariance}, reference_corpus(), memit_hparams)
    steer = derive_steering(surgeon, tokenizer, sentiment_pairs(world), layer=1)
    return {
        "rome": [rome],
        "hollow rome": [LowRank(site=rome.site, U=torch.zeros_like(rome.U), V=rome.V, provenance=rome.provenance)],
        "absurd rome": [LowRank(site=rome.site, U=rome.U * 40, V=rome.V, provenance=rome.provenance)],
        "memit": list(memit.edits),
        "induction ablation": [induction_ablation],
        "steering": [steer],
        "huge steering": [Steering(site=steer.site, vector=steer.vector, scale=1000.0)],
    }


@pytest.fixture(scope="module")
def versions(host, edits) -> dict[str, int]:
    numbers = {"base": 0}
    for label, edit_list in edits.items():
        ids = [host.registry.create_edit("toy", edit, "test").id for edit in edit_list]
        numbers[label] = host.registry.create_version("toy", 0, "test", append=ids).number
    return numbers


def _run(host: ModelHost, spec: dict, version: int) -> dict:
    suite = Suite.from_spec(spec, host.model_dir)
    return {result.name: result for result in CheckRunner(host, host.registry).run(suite, version)}


def _suite(*checks: dict, **extra) -> dict:
    return {"corpora": {"reference": reference_corpus()[-120:]}, "checks": list(checks), **extra}


def _induction_items(world, n: int = 48) -> list[dict]:
    rng = random.Random(1)
    items = []
    for sequence in induction_sequences(world, n=n, length=8, seed=777):
        k = rng.randrange(2, 8)
        wrong = rng.sample([s for s in world.symbols if s not in sequence], 3)
        items.append({"prompt": " ".join(sequence + sequence[:k]), "choices": [sequence[k], *wrong], "answer": 0})
    return items


def test_every_kind_is_registered() -> None:
    assert set(KINDS) == {
        "kl",
        "top1_agreement",
        "perplexity_ratio",
        "choice_task",
        "generation_task",
        "behaviour",
        "edit_intent",
        "edit_locality",
    }


def test_corpus_checks_pass_a_fact_edit_and_fail_absurd_steering_with_an_interval_past_the_bound(
    host, edits, versions
) -> None:
    spec = _suite({"kind": "kl", "params": {"max": 0.05}}, {"kind": "top1_agreement"}, {"kind": "perplexity_ratio"})
    good = _run(host, spec, versions["rome"])
    assert all(result.passed for result in good.values()), [r.reason for r in good.values()]
    subject = edits["rome"][0].provenance["request"]["subject"]
    about_it = sum(subject in text for text in reference_corpus()[-120:])  # left out: changing them is the point
    assert good["kl"].ci_low <= good["kl"].metric <= good["kl"].ci_high < 0.05 and good["kl"].n == 120 - about_it
    bad = _run(host, spec, versions["huge steering"])
    assert not any(result.passed for result in bad.values())
    assert bad["kl"].ci_low > 0.05 and "upper bound" in bad["kl"].reason  # the interval excludes the threshold
    assert bad["kl"].worst and "max_token_kl" in bad["kl"].worst[0]
    assert bad["top1_agreement"].ci_high < 0.9 and bad["perplexity_ratio"].ci_low > 1.1


def test_choice_task_fails_an_induction_head_ablation(host, toy, versions) -> None:
    items = _induction_items(toy[2])
    spec = _suite(
        {"kind": "choice_task", "name": "floor", "params": {"items": items, "min_accuracy": 0.8}},
        {"kind": "choice_task", "name": "drop", "params": {"items": items, "max_drop": 0.1}},
    )
    base = _run(host, spec, versions["base"])
    assert base["floor"].passed and base["floor"].metric >= 0.9 and base["drop"].passed and base["drop"].metric == 0
    ablated = _run(host, spec, versions["induction ablation"])
    assert not ablated["floor"].passed and ablated["floor"].worst[0]["answer"] != ablated["floor"].worst[0]["chosen"]
    assert not ablated["drop"].passed and ablated["drop"].ci_low > 0.1 and ablated["drop"].rule == "lenient"
    assert "base (version 0)" in ablated["drop"].reference


def test_generation_task_from_a_shipped_file_and_inline_items(host, versions) -> None:
    spec = _suite(
        {"kind": "generation_task", "name": "induction", "params": {"shipped": "induction", "min_pass_rate": 0.8}},
        {
            "kind": "generation_task",
            "name": "inline",
            "params": {"items": [{"prompt": "The capital of Riia is", "not_contains": "the"}], "max_tokens": 2},
        },
    )
    base = _run(host, spec, versions["base"])
    assert base["induction"].passed and base["induction"].n == 128 and base["inline"].passed
    ablated = _run(host, spec, versions["induction ablation"])
    assert not ablated["induction"].passed and {"prompt", "starts_with", "produced"} <= set(
        ablated["induction"].worst[0]
    )


def test_behaviour_minimum_functionality_invariance_and_direction(host, toy, edits, versions) -> None:
    symbols = toy[2].symbols
    copying = {
        "test": "mft",
        "template": "{a} {b} {c} {d} {a} {b} {c}",
        "slots": {"a": symbols[:2], "b": symbols[2:4], "c": symbols[4:6], "d": symbols[6:8]},
        "expect": {"starts_with": "{d}"},
        "max_tokens": 1,
    }
    direction = {
        "test": "dir",
        "template": "{a} {b} {c} {a} {b}",
        "slots": {"a": symbols[10:12], "b": symbols[12:14], "c": symbols[14:16]},
        "perturbations": [[symbols[14], symbols[20]], [symbols[15], symbols[20]]],
        "continuation": symbols[20],
        "direction": "up",
        "margin": 1.0,
    }
    subject = edits["rome"][0].provenance["request"]["subject"]
    canonical, *phrasings = (template.replace("{s}", "{country}") for template in TEMPLATES["capital"])
    invariance = {  # the fact edit's subject: its answer must not depend on the phrasing
        "test": "inv",
        "template": canonical,
        "slots": {"country": [subject]},
        "perturbations": [[canonical.format(country=subject), p.format(country=subject)] for p in phrasings],
        "max_tokens": 1,
    }
    spec = _suite(
        {"kind": "behaviour", "name": "mft", "params": copying},
        {"kind": "behaviour", "name": "dir", "params": direction},
    )
    base = _run(host, spec, versions["base"])
    assert base["mft"].passed and base["mft"].n == 16 and base["dir"].passed and base["dir"].n == 8
    ablated = _run(host, spec, versions["induction ablation"])
    assert not ablated["mft"].passed and not ablated["dir"].passed
    paraphrase = _suite({"kind": "behaviour", "name": "inv", "params": invariance})
    assert _run(host, paraphrase, versions["base"])["inv"].passed
    broken = _run(host, paraphrase, versions["rome"])["inv"]  # ROME generalises to some phrasings only
    assert not broken.passed and broken.worst[0]["output"] != broken.worst[0]["perturbed_output"]


def test_edit_intent_and_locality_are_derived_from_the_versions_own_edits(host, toy, edits, versions) -> None:
    suite = default_toy_suite(toy[2], reference_corpus())
    spec = {**suite, "checks": [{"kind": "edit_intent"}, {"kind": "edit_locality", "params": {"max_neighbours": 30}}]}
    rome = _run(host, spec, versions["rome"])
    assert rome["edit_locality"].passed and rome["edit_locality"].n == 30  # drawn from 59 subjects + 1 relation
    assert rome["edit_intent"].n == 6  # its prompt and the five other phrasings of its relation
    hollow = _run(host, spec, versions["hollow rome"])
    assert not hollow["edit_intent"].passed and hollow["edit_intent"].worst[0]["case"] == "efficacy"
    absurd = _run(host, spec, versions["absurd rome"])
    assert not absurd["edit_locality"].passed and absurd["edit_locality"].worst[0]["candidate"]
    steering = _run(host, spec, versions["steering"])
    assert steering["edit_intent"].passed and steering["edit_intent"].n > 10  # its derivation pairs moved
    flipped = {**spec, "checks": [{"kind": "edit_intent", "params": {"steering_pairs": [
        ["the food was terrible", "the food was wonderful"], ["the room was awful", "the room was great"]
    ]}}]}  # fmt: skip
    against = _run(host, flipped, versions["steering"])["edit_intent"]
    assert not against.passed and against.metric == 0.0 and against.worst[0]["case"] == "steering"
    subject, target = (edits["rome"][0].provenance["request"][k] for k in ("subject", "target"))
    follow_on = [{"subject": subject, "prompt": f"{subject} :", "starts_with": target}, {"subject": "elsewhere",
                 "prompt": "x", "contains": "y"}]  # fmt: skip
    ported = {
        **spec,
        "checks": [{"kind": "edit_intent", "params": {"include": ["portability"], "portability": follow_on}}],
    }
    # the record "X : capital , language": the edit's key holds the subject with nothing before it,
    # so it reaches the record; the hollow edit (same claim, no change) does not
    assert _run(host, ported, versions["rome"])["edit_intent"].passed
    portability = _run(host, ported, versions["hollow rome"])["edit_intent"]
    assert portability.n == 1 and not portability.passed and portability.worst[0]["case"] == "portability"
    nothing = _run(host, spec, versions["induction ablation"])
    assert all(not r.applicable and r.passed and r.n == 0 for r in nothing.values())  # n/a, not a failure
    assert "not applicable" in nothing["edit_intent"].reason and "claim nothing" in nothing["edit_intent"].reason


def test_a_memit_batch_is_judged_fact_by_fact_and_fact_recall_expects_its_new_answers(host, toy, edits, versions):
    """The gate reads each request of a MEMIT batch: intent per fact (4 capitals x 6 phrasings),
    locality around each (its subject's language always among the neighbours), and the shipped
    fact-recall task expecting the new capitals, not counting them as regressions."""
    suite = default_toy_suite(toy[2], reference_corpus())
    by_name = {check.get("name", check["kind"]): check for check in suite["checks"]}
    requests = edits["memit"][0].provenance["requests"]
    truth = {(fact.subject, fact.relation): fact.object for fact in toy[2].facts}
    choices = [  # each edited capital (old answer first) and its subject's language
        {
            "prompt": TEMPLATES[relation][0].format(s=r["subject"]),
            "choices": [truth[r["subject"], relation], other],
            "answer": 0,
        }
        for r in requests
        for relation, other in (("capital", r["target"]), ("language", truth[requests[0]["subject"], "capital"]))
    ]
    by_name["choices"] = {"kind": "choice_task", "name": "choices", "params": {"items": choices, "min_accuracy": 1.0}}
    spec = {**suite, "checks": [by_name[name] for name in ("edit_intent", "edit_locality", "fact_recall", "choices")]}
    results = _run(host, spec, versions["memit"])
    intent, locality, recall = (results[name] for name in ("edit_intent", "edit_locality", "fact_recall"))
    assert results["choices"].n == 8 and results["choices"].passed  # the new capitals count as the right choice
    assert intent.applicable and intent.n == 4 and intent.passed  # efficacy only in the default suite
    assert locality.applicable and locality.n == 4 * 40
    shipped = (TOY_MODEL_DIR / "task_fact_recall.jsonl").read_text().splitlines()
    assert recall.n == len(shipped)  # every item judged, none left out
    assert not any(row.get("edited_fact") for row in recall.worst)  # the new capitals count as answers
    hollow = [LowRank(site=e.site, U=torch.zeros_like(e.U), V=e.V, provenance=e.provenance) for e in edits["memit"]]
    ids = [host.registry.create_edit("toy", edit, "test").id for edit in hollow]
    claims = _run(host, spec, host.registry.create_version("toy", 0, "test", append=ids).number)
    assert not claims["edit_intent"].passed and claims["edit_intent"].metric == 0.0
    missed = {row["prompt"] for row in claims["fact_recall"].worst if row.get("edited_fact")}
    assert missed == {f"The capital of {r['subject']} is" for r in requests}  # expected their new answers
    chose_old = {row["prompt"] for row in claims["choices"].worst if row.get("edited_fact")}
    assert chose_old == missed and claims["choices"].metric == 0.5  # the languages still right


def test_a_reference_alias_that_never_passed_is_replaced_by_the_last_version_that_did(host, versions) -> None:
    registry = host.registry
    registry.set_suite("toy", {"corpora": {"r": ["a"]}, "checks": [{"kind": "kl"}]}, "test")
    registry.record_check_run("toy", versions["rome"], "passed", [], "test")
    moved = registry.promote("toy", "staging", versions["rome"], "test", None, reason="passed")
    registry.promote("toy", "staging", versions["huge steering"], "ops", moved.etag, "drill", True, "admin")
    spec = _suite({"kind": "kl", "params": {"against": "staging", "max": 10}})
    result = _run(host, spec, versions["steering"])["kl"]
    assert f"staging serves version {versions['huge steering']}, which never passed" in result.reference
    assert f"compared against version {versions['rome']}" in result.reference
    missing = _run(host, _suite({"kind": "kl", "params": {"against": "nowhere"}}), versions["steering"])["kl"]
    assert not missing.passed and missing.rule == "error" and "nowhere" in missing.reason


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"corpora": {"r": ["a"]}, "checks": [{"kind": "nope"}]}, "checks[0].kind"),
        ({"corpora": {"r": ["a"]}, "checks": [{"kind": "kl", "params": {"max": -1}}]}, "checks[0].params.max"),
        ({"corpora": {"r": ["a"]}, "checks": [{"kind": "kl", "params": {"maxx": 1}}]}, "unknown params ['maxx']"),
        ({"corpora": {"r": ["a"]}, "checks": [{"kind": "kl"}, {"kind": "kl"}]}, "used twice"),
        ({"corpora": {"r": ["a"]}, "checks": [{"kind": "kl", "params": {"corpus": "x"}}]}, "checks[0].params.corpus"),
        ({"corpora": {"r": []}, "checks": [{"kind": "kl"}]}, "corpora"),
        (
            {
                "corpora": {"r": ["a"]},
                "checks": [
                    {
                        "kind": "choice_task",
                        "params": {"items": [{"prompt": "p", "choices": ["a", "b"], "answer": 2}], "min_accuracy": 0.5},
                    }
                ],
            },
            "checks[0].params.items[0].answer",
        ),
        ({"corpora": {"r": ["a"]}, "checks": [{"kind": "generation_task", "params": {"shipped": "nope"}}]}, "nope"),
        (
            {
                "corpora": {"r": ["a"]},
                "checks": [
                    {
                        "kind": "behaviour",
                        "params": {
                            "test": "mft",
                            "template": "{x}",
                            "slots": {"y": ["a"]},
                            "expect": {"contains": "a"},
                        },
                    }
                ],
            },
            "template",
        ),
        ({"corpora": {"r": ["a"]}, "seed": "x", "checks": [{"kind": "kl"}]}, "suite.seed"),
        ({"corpora": {"r": ["a"]}, "relations": [["no slot"]], "checks": [{"kind": "kl"}]}, "relations[0]"),
        ({"reference_texts": ["a"], "tasks": {"fact_recall": float("nan")}}, "min_pass_rate"),
    ],
)
def test_invalid_suites_are_refused_naming_the_field(spec, field) -> None:
    with pytest.raises(InvalidArgument, match=field.replace("[", r"\[").replace("]", r"\]")):
        Suite.from_spec(spec, TOY_MODEL_DIR)


def test_a_first_release_suite_still_reads_as_check_instances() -> None:
    suite = Suite.from_spec(
        {"reference_texts": ["a b"], "kl_mean_max": 0.1, "tasks": {"induction_accuracy": 0.7}}, TOY_MODEL_DIR
    )
    assert [c.name for c in suite.checks] == [
        "kl_vs_base",
        "kl_vs_production",
        "top1_agreement",
        "perplexity_ratio",
        "induction",
        "edit_intent",
    ]
    assert suite.checks[0].config.threshold == 0.1 and suite.reference_texts() == ["a b"]


def test_task_files_next_to_a_suite_file_are_inlined(tmp_path) -> None:
    (tmp_path / "tasks.jsonl").write_text(json.dumps({"prompt": "p", "choices": ["a", "b"], "answer": 1}) + "\n\n")
    spec = {"checks": [{"kind": "choice_task", "params": {"items_file": "tasks.jsonl", "min_accuracy": 0.5}}]}
    assert inline_item_files(spec, tmp_path)["checks"][0]["params"]["items"] == [
        {"prompt": "p", "choices": ["a", "b"], "answer": 1}
    ]


def test_the_bootstrap_interval_covers_the_true_value_at_its_nominal_rate() -> None:
    """Simulated: 400 samples each of a Bernoulli mean (n = 150) and of a token-weighted ratio; the
    95% interval must contain the true value 90–100% of the time."""
    generator = torch.Generator().manual_seed(0)
    covered_mean = covered_ratio = 0
    trials = 400
    for trial in range(trials):
        draws = (torch.rand(150, generator=generator) < 0.3).double()
        estimate = mean(draws, 1000, seed=trial)
        covered_mean += estimate.low <= 0.3 <= estimate.high
        tokens = torch.randint(5, 40, (150,), generator=generator).double()
        per_token = torch.randn(150, generator=generator).double() * 0.5 + 2.0  # true mean per token: 2.0
        sums = per_token * tokens + torch.randn(150, generator=generator).double() * tokens.sqrt()
        ratio = ratio_of_sums(sums, tokens, 1000, seed=trial)
        covered_ratio += ratio.low <= 2.0 <= ratio.high
    assert 0.90 <= covered_mean / trials <= 1.0
    assert 0.90 <= covered_ratio / trials <= 1.0
    assert mean(torch.ones(5).double(), 100, 0) == mean(torch.ones(5).double(), 100, 0)  # seeded: reproducible


def test_the_same_kinds_run_on_a_random_llama_with_task_files_made_here(tmp_path) -> None:
    from tests.conftest import save_tiny_llama

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade("head", url)
    llama = ModelHost("llama", str(save_tiny_llama(tmp_path / "llama")), Registry(url))
    try:
        words = [f"w{i}" for i in range(2, 60)]
        rng = random.Random(0)
        corpus = [" ".join(rng.choices(words, k=12)) for _ in range(40)]
        items = [{"prompt": " ".join(rng.choices(words, k=5)), "choices": rng.sample(words, 3), "answer": 0}]
        (tmp_path / "task_echo.jsonl").write_text(json.dumps({"prompt": "w3 w4", "not_contains": "<unk>"}) + "\n")
        spec = {
            "corpora": {"words": corpus},
            "checks": [
                {"kind": "kl", "params": {"max": 0.01}},
                {"kind": "top1_agreement"},
                {"kind": "perplexity_ratio"},
                {"kind": "choice_task", "params": {"items": items * 4, "max_drop": 0.1}},
                {"kind": "generation_task", "params": {"shipped": "echo"}},
                {
                    "kind": "behaviour",
                    "params": {
                        "test": "inv",
                        "template": "w5 {x}",
                        "slots": {"x": words[:4]},
                        "perturbations": [["w5", "w5"]],
                    },
                },
                {"kind": "edit_intent"},
                {"kind": "edit_locality"},
            ],
        }
        suite = Suite.from_spec(spec, tmp_path)  # the task file ships beside this "model"
        steer = Steering(site="blocks.1.hook_resid_pre", vector=torch.randn(32, generator=torch.Generator()), scale=50)
        edit = llama.registry.create_edit("llama", steer, "test").id
        steered = llama.registry.create_version("llama", 0, "test", append=[edit]).number
        base = {r.name: r for r in CheckRunner(llama, llama.registry).run(suite, 0)}
        assert all(r.passed for r in base.values()), [r.reason for r in base.values() if not r.passed]
        assert base["kl"].metric == 0 and base["kl"].n == 40 and base["choice_task"].n == 4
        moved = {r.name: r for r in CheckRunner(llama, llama.registry).run(suite, steered)}
        assert not moved["kl"].passed and moved["kl"].ci_low > 0.01
        assert moved["behaviour"].passed  # an identity perturbation is invariant under any version
    finally:
        llama.close()


class _Cells(HTMLParser):
    """Each check row's name and the estimate it shows (``data-check`` / ``data-estimate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.estimates: dict[str, float] = {}
        self.row: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if "data-check" in found:
            self.row = found["data-check"]
        if "data-estimate" in found and self.row is not None:
            self.estimates[self.row] = float(found["data-estimate"] or "nan")


def rendered_dom(browser: str, page) -> str:
    """The page as headless Chromium renders it (its DOM after layout)."""
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip


def test_a_run_report_is_one_page_whose_numbers_are_the_runs(served, tmp_path) -> None:  # noqa: F811
    server, admin, _, address = served
    direction = torch.randn(128, generator=torch.Generator().manual_seed(3))
    huge = admin.create_edit("toy", Steering(site="blocks.1.hook_resid_pre", vector=direction, scale=50.0))
    version = admin.create_version("toy", 0, append=[huge.id])
    run = run_checks(admin, version.number)
    _, secret = server.registry.create_key("reporter", "reader", "test")
    env = {**os.environ, "SCALPEL_ADDRESS": address, "SCALPEL_API_KEY": secret}
    page, png = tmp_path / "report.html", tmp_path / "report.png"
    browser = find_browser()
    command = [sys.executable, "-m", "service.cli", "checks", "report", str(run.id), "--html", str(page)]
    done = subprocess.run(
        [*command, *(["--png", str(png)] if browser else [])], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    html = page.read_text()
    assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
    cells = _Cells()
    cells.feed(html)
    assert cells.estimates == {r.name: r.metric for r in run.results if r.rule != "error"}
    assert html.count('class="fail"') == sum(not r.passed for r in run.results) and "<svg" in html
    assert f"<code>{huge.kind}</code>" in html and huge.spec_sha256[:16] in html  # the version's edits
    # a steering vector without pairs gives the edit-aware checks nothing to judge: n/a, and said so
    unjudged = sum(r.not_applicable for r in run.results)
    assert unjudged >= 2 and html.count('class="na">n/a<') == unjudged and 'id="edit-aware"' in html
    text = subprocess.run([*command[:4], "get", str(run.id)], env=env, capture_output=True, text=True).stdout
    assert text.count("\n  n/a  ") == unjudged and "no edit-aware check had anything to judge" in text
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page was checked by parsing only")
    dom = rendered_dom(browser, page)
    rendered = _Cells()
    rendered.feed(dom)
    assert rendered.estimates == cells.estimates and 'id="verdict">FAILED<' in dom
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
