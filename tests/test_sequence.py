"""pbrl.sequence: data checks, log-probabilities, the objectives against float64 references and TRL's own
DPOTrainer, the CLI with exact resume, and a learning check on the synthetic grammar (DESIGN §7.5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from pbrl.core import dpo_loss  # noqa: E402
from pbrl.core.alignment import (  # noqa: E402
    gae_advantages,
    inverse_soft_q_loss,
    irepo_loss,
    is_daa_loss,
    is_daa_weights,
    micro_mixture_loss,
    pama_advantage,
    potential_shaping,
    ppo_clip_loss,
    rso_accept,
    rto_token_rewards,
    soft_value,
    tgdpo_loss,
    tvkd_loss,
    tvkd_qadapter_loss,
    tvkd_qadapter_return,
)
from pbrl.errors import ConfigError, DatasetError  # noqa: E402
from pbrl.sequence.data import PairSampler, collate_pairs, load_pairs, tokenize_pairs  # noqa: E402
from pbrl.sequence.lm import completion_logps, word_tokenizer  # noqa: E402
from pbrl.sequence.synthetic import ADJECTIVES, NOUNS, VERBS, make_task, tiny_gpt2_config, write_tiny_model  # noqa: E402
from tests.conftest import CliResult, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def grammar(tmp_path_factory) -> dict[str, Path]:
    """The synthetic task written to disk, with its tokenizer and a tiny GPT-2 model folder (random weights)."""
    d = tmp_path_factory.mktemp("grammar")
    paths = make_task(seed=0, train_prompts=40, heldout_prompts=10, sft_per_prompt=2, pairs_per_prompt=2).write(d)
    config = write_tiny_model(d / "model")
    (d / "gpt2.json").write_text(json.dumps(config))
    return {**paths, "model": d / "model", "config": d / "gpt2.json", "dir": d}


def _write(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else line.encode())
            f.write(b"\n")
    return path


GOOD = json.dumps({"prompt": "a b c :", "chosen": " gold a sees red b .", "rejected": " red a sees red b ."})


# ---------------------------------------------------------------- data: formats and bad input


def test_jsonl_parquet_and_datasets_give_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    extra = {"weight": 2.0, "group": "3", "preference": 0.7, "score_chosen": 1.0}
    rows = [{**json.loads(GOOD), **dict.fromkeys(extra)}, {**json.loads(GOOD), **extra}]  # columns: same keys
    jsonl = _write(tmp_path / "p.jsonl", [json.dumps(r) for r in rows])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    a, b, c = load_pairs(jsonl), load_pairs(tmp_path / "p.parquet"), load_pairs(Dataset.from_list(rows))
    strip = lambda ps: [(p.prompt, p.chosen, p.rejected, p.weight, p.group, p.preference, p.score_chosen) for p in ps]
    assert strip(a) == strip(b) == strip(c)
    assert a[1].group == "3" and a[1].weight == 2.0 and a[0].preference is None


@pytest.mark.parametrize("line, field, found", [
    (json.dumps({"prompt": "a :", "rejected": " x ."}), "field 'chosen'", "missing"),
    (json.dumps({"prompt": "a :", "chosen": "   ", "rejected": " x ."}), "field 'chosen'", "'   '"),
    (json.dumps({"prompt": "a :", "chosen": " y .", "rejected": 3}), "field 'rejected'", "3 (int)"),
    (json.dumps({"prompt": "a :", "chosen": " y .", "rejected": " x .", "weight": -1}), "field 'weight'", "-1"),
    (json.dumps({"prompt": "a :", "chosen": " y .", "rejected": " x .", "preference": 1.0}), "field 'preference'", "1.0"),
    ('{"prompt": "a :", "chosen": ', "JSON", "column"),
    (b'{"prompt": "a \xff :", "chosen": " y .", "rejected": " x ."}', "bytes", "\\xff"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, line, field, found):
    path = _write(tmp_path / "bad.jsonl", [GOOD, "", line, GOOD])
    with pytest.raises(DatasetError) as err:
        load_pairs(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: {field}: got ") and found in message and "\n" not in message


def test_prompt_past_max_length_is_refused_and_long_completions_cut(tmp_path):
    tok = word_tokenizer(["a b c gold red sees : ."])
    long = _write(tmp_path / "long.jsonl", [GOOD, json.dumps({"prompt": "a b c a b c a b :", "chosen": " a .",
                                                               "rejected": " b ."})])
    with pytest.raises(DatasetError, match=rf"^{long}:2: field 'prompt': got 9 tokens, expected fewer than max_length = 8"):
        tokenize_pairs(load_pairs(long), tok, max_length=8)
    cut = tokenize_pairs(load_pairs(_write(tmp_path / "ok.jsonl", [GOOD])), tok, max_length=8)
    assert cut.truncated == 2 and len(cut.prompt[0]) + len(cut.chosen[0]) == 8  # both completions cut


def test_bad_data_trains_nothing(tmp_path, grammar):
    bad = _write(tmp_path / "bad.jsonl", [GOOD] * 5 + [json.dumps({"prompt": "a :", "rejected": " b ."})])
    out = tmp_path / "run"
    proc = _seq("train", "--method", "dpo", "--model", str(grammar["model"]), "--data", str(bad), "--out", str(out),
                "--steps", "2", "--quiet")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{bad}:6: field 'chosen': got missing" in last
    assert not out.exists()  # nothing written, nothing trained
    long = _write(tmp_path / "long.jsonl", [GOOD, json.dumps({"prompt": "ant " * 40 + ":", "chosen": " gold ant .",
                                                              "rejected": " red ant ."})])
    proc = _seq("train", "--method", "dpo", "--model", str(grammar["model"]), "--data", str(long), "--out", str(out),
                "--max-length", "32", "--quiet")
    assert proc.returncode != 0 and f"{long}:2: field 'prompt': got 41 tokens" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_completion_metrics_count_broken_samples_out_of_diversity():
    """Hand-made samples with known answers: repeats and broken completions lower ``distinct_valid``; broken ones
    still count in ``distinct_completions`` (the known-bad measure of diversity)."""
    from pbrl.sequence.synthetic import completion_metrics

    prompts = ["cat dog fox :", "cod owl bee :"]
    ok_a, ok_b = " gold cat sees red dog .", " red fox hugs big cat ."
    broken = [" cat cat cat", " dog dog", " fox", " gold gold"]
    m = completion_metrics(prompts, [[ok_a, ok_a, ok_b, broken[0]], broken[1:] + [" red owl finds gold bee ."]])
    assert m["valid"] == 4 / 8 and m["preferred"] == 4 / 8 and m["preferred_valid"] == 3 / 8
    assert m["distinct_valid"] == 3 / 4            # ok_a twice, ok_b, the owl sentence
    assert m["distinct_completions"] == 7 / 8      # the four broken ones are all distinct


def test_sampler_resumes_its_stream(grammar):
    tok = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    data = tokenize_pairs(load_pairs(grammar["pairs"]), tok, max_length=32)
    a = PairSampler(data, 7, seed=3, pad_id=0, device=torch.device("cpu"))
    for _ in range(5):
        a.sample()
    state = a.state_dict()
    b = PairSampler(data, 7, seed=99, pad_id=0, device=torch.device("cpu"))
    b.load_state_dict(state)
    for _ in range(20):  # crosses epoch boundaries (80 pairs)
        assert torch.equal(a.sample().input_ids, b.sample().input_ids)


# ---------------------------------------------------------------- log-probabilities


def test_completion_logps_match_a_float64_loop(grammar):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(grammar["model"]).double().eval()
    tok = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    data = tokenize_pairs(load_pairs(grammar["pairs"]), tok, max_length=32)
    batch = collate_pairs(data, torch.arange(4), tok.pad_token_id)
    got = completion_logps(model, batch.input_ids, batch.attention_mask, batch.completion_mask)
    for row in range(8):
        pair, side = row % 4, ("chosen" if row < 4 else "rejected")
        ids = data.prompt[pair] + getattr(data, side)[pair]
        logits = model(torch.tensor([ids])).logits[0]
        want = sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(len(data.prompt[pair]), len(ids)))
        assert got.total[row].item() == pytest.approx(want, abs=1e-9)
        assert got.lengths[row].item() == len(getattr(data, side)[pair])


# ---------------------------------------------------------------- objectives against float64 references


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def test_is_daa_weights_reference():
    pc, pr, rc, rr = (_rand(6, seed=s) for s in range(4))
    w = is_daa_weights(pc, pr, rc, rr, epsilon=0.3)
    for i in range(6):
        ratio = math.exp(pc[i] - rc[i]) * math.exp(pr[i] - rr[i])
        assert w[i].item() == pytest.approx(min(ratio, math.exp(0.6)), rel=1e-12)
    pc.requires_grad_(True)
    assert not is_daa_weights(pc, pr, rc, rr).requires_grad


def test_is_daa_loss_official_ipo_and_sigmoid_forms_reference():
    """IS-DAA as ``cli/train_is_dpo.py`` trains it: ``w · (h − 1/(2β))²`` on summed log-ratios, w = exp(min(Σ log π −
    log π_D, 2ε)) against the data policy's log-probs, detached; the DPO form ``−w log σ(β h)`` as the option."""
    pc, pr, rc, rr, dc, dr = (_rand(8, seed=s) for s in range(6))
    pc.requires_grad_(True)
    beta, eps = 0.05, 1.0
    ipo = is_daa_loss(pc, pr, rc, rr, dc, dr, beta=beta, epsilon=eps)
    dpo = is_daa_loss(pc, pr, rc, rr, dc, dr, beta=beta, epsilon=eps, loss_type="sigmoid")
    for i in range(8):
        w = math.exp(min(float(pc[i] - dc[i] + pr[i] - dr[i]), 2 * eps))
        h = float((pc[i] - rc[i]) - (pr[i] - rr[i]))
        assert ipo[i].item() == pytest.approx(w * (h - 1 / (2 * beta)) ** 2, rel=1e-12)
        assert dpo[i].item() == pytest.approx(-w * math.log(1 / (1 + math.exp(-beta * h))), rel=1e-12)
    # the weight carries no gradient: d/dπ_w of w (h − 1/(2β))² is w · 2 (h − 1/(2β))
    (grad,) = torch.autograd.grad(ipo.sum(), pc)
    h = (pc - rc) - (pr - rr)
    w = torch.exp(torch.clamp(pc - dc + pr - dr, max=2 * eps))
    assert torch.allclose(grad, (w * 2 * (h - 1 / (2 * beta))).detach(), rtol=1e-12)


def test_is_daa_learner_reads_the_data_policy_log_probs(grammar):
    """The rows' ``chosen_logps`` / ``rejected_logps`` are the weight's denominator; absent, the reference is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pbrl.sequence.lm import Reference
    from pbrl.sequence.objectives import MethodConfig, SequenceLearner

    rows = [json.loads(line) for line in open(grammar["pairs"])][:6]
    tok = AutoTokenizer.from_pretrained(grammar["model"])
    policy = AutoModelForCausalLM.from_pretrained(grammar["model"]).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # a policy that differs from its reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = Reference.frozen_copy(AutoModelForCausalLM.from_pretrained(grammar["model"]))
    learner = SequenceLearner(policy, MethodConfig(name="is_daa", beta=0.05), reference)

    def loss_on(extra: list[dict[str, float]]) -> float:
        data = tokenize_pairs(load_pairs([{**r, **e} for r, e in zip(rows, extra)]), tok, max_length=32)
        return float(learner.loss(collate_pairs(data, torch.arange(len(data)), tok.pad_token_id), 0).loss)

    data = tokenize_pairs(load_pairs(rows), tok, max_length=32)
    batch = collate_pairs(data, torch.arange(len(data)), tok.pad_token_id)
    with torch.no_grad():
        pol = completion_logps(policy, batch.input_ids, batch.attention_mask, batch.completion_mask).total.double()
        ref = completion_logps(reference.model, batch.input_ids, batch.attention_mask, batch.completion_mask
                               ).total.double()
    (pc, pr), (rc, rr) = pol.chunk(2), ref.chunk(2)
    h = (pc - rc) - (pr - rr)
    ipo = (h - 1 / (2 * 0.05)) ** 2
    stored = [{"chosen_logps": float(c), "rejected_logps": float(r)} for c, r in zip(rc, rr)]
    expected = float((torch.exp(torch.clamp(pc - rc + pr - rr, max=2.0)) * ipo).mean())
    assert loss_on([{}] * 6) == pytest.approx(expected, rel=1e-5)
    assert loss_on(stored) == pytest.approx(expected, rel=1e-5)  # stored = the reference's: the same weights
    unlikely = [{"chosen_logps": -500.0, "rejected_logps": -500.0}] * 6  # π_D made them rare: every weight clipped
    assert loss_on(unlikely) == pytest.approx(float(math.exp(2.0) * ipo.mean()), rel=1e-5)
    with pytest.raises(DatasetError, match="chosen_logps.*<= 0"):
        load_pairs([{**rows[0], "chosen_logps": 0.5}])


def test_tvkd_qadapter_return_reference():
    """TVKD's official qadapter score in float64, one token at a time: the student's probabilities at the teacher's
    top-k plus a rest bucket (clamped to [1e-8, 1 − 1e-8]), the label's bucket log-probability less γ × the next
    state's bucket entropy (0 after the last token); the pairwise loss −log σ(R_w − R_l)."""
    b, t, v, k, gamma = 3, 5, 7, 3, 0.8
    logits = _rand(b, t, v, seed=11).requires_grad_(True)
    labels = torch.randint(0, v, (b, t), generator=torch.Generator().manual_seed(2))
    top_k = torch.stack([torch.randperm(v, generator=torch.Generator().manual_seed(100 + i))[:k]
                         for i in range(b * t)]).view(b, t, k)
    labels[0, 0] = top_k[0, 0, 2]  # one label certainly inside the top-k, one certainly outside
    labels[1, 1] = next(x for x in range(v) if x not in top_k[1, 1].tolist())
    mask = torch.ones(b, t, dtype=torch.float64)
    mask[1, 3:] = 0
    mask[2, 4:] = 0
    got = tvkd_qadapter_return(logits, labels, top_k, mask, gamma=gamma)

    def buckets(i: int, j: int) -> list[float]:
        p = [math.exp(x) for x in logits[i, j].tolist()]
        p = [x / sum(p) for x in p]
        top = [p[x] for x in top_k[i, j].tolist()]
        return [min(max(x, 1e-8), 1 - 1e-8) for x in top + [1 - sum(top)]]

    for i in range(b):
        total = 0.0
        for j in range(t):
            if not mask[i, j]:
                continue
            q = buckets(i, j)
            ids = top_k[i, j].tolist()
            label_bucket = ids.index(int(labels[i, j])) if int(labels[i, j]) in ids else k
            nxt = -sum(x * math.log(x) for x in buckets(i, j + 1)) if j + 1 < t and mask[i, j + 1] else 0.0
            total += math.log(q[label_bucket]) - gamma * nxt
        assert got[i].item() == pytest.approx(total, rel=1e-10)
    loss = tvkd_qadapter_loss(got[:2], got[1:])
    for i in range(2):
        assert loss[i].item() == pytest.approx(math.log1p(math.exp(-(got[i] - got[i + 1]).item())), rel=1e-12)
    # both terms carry the student's gradient (no reference, nothing detached)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    assert grad[0, 1].abs().sum() > 0 and grad[2, 4].abs().sum() == 0


def _masked(b, t, seed):
    mask = torch.ones(b, t, dtype=torch.float64)
    for i in range(b):
        mask[i, t - 1 - i % 3:] = 0
    return _rand(b, t, seed=seed) * mask, mask


def test_tgdpo_reference_and_alpha_zero_is_dpo():
    (pc, mc), (pr, mr) = _masked(4, 6, 0), _masked(4, 6, 1)
    rc, rr, gc, gr = (_rand(4, 6, seed=s) for s in (2, 3, 4, 5))
    beta, alpha = 0.2, 0.7
    gc, gr = gc * 8, gr * 8  # token rewards large enough for the clamp to act
    for clip in (None, 1.0, 0.5):
        got = tgdpo_loss(pc, pr, rc, rr, gc, gr, mc, mr, beta=beta, alpha=alpha, weight_clip=clip)

        def mult(x: float, clip: float | None = clip) -> float:
            return x if clip is None else min(max(x, max(0.0, 1 - clip)), 1 + clip)

        for i in range(4):
            sw = sum(beta * mult(1 + alpha * beta * (gc[i, t] - rc[i, t]).item()) * (pc[i, t] - rc[i, t]).item()
                     for t in range(6) if mc[i, t])
            sl = sum(beta * mult(1 - alpha * beta * (gr[i, t] - rr[i, t]).item()) * (pr[i, t] - rr[i, t]).item()
                     for t in range(6) if mr[i, t])
            assert got[i].item() == pytest.approx(math.log1p(math.exp(-(sw - sl))), rel=1e-12)
    assert not torch.equal(tgdpo_loss(pc, pr, rc, rr, gc, gr, mc, mr, beta=beta, alpha=alpha, weight_clip=None),
                           tgdpo_loss(pc, pr, rc, rr, gc, gr, mc, mr, beta=beta, alpha=alpha, weight_clip=1.0))
    plain = tgdpo_loss(pc, pr, rc, rr, gc, gr, mc, mr, beta=beta, alpha=0.0)
    dpo, _, _ = dpo_loss((pc * mc).sum(-1), (pr * mr).sum(-1), (rc * mc).sum(-1), (rr * mr).sum(-1), beta=beta)
    torch.testing.assert_close(plain, dpo, rtol=1e-12, atol=1e-12)


def test_potential_shaping_and_tvkd_reference():
    phi, mask = _masked(3, 5, 0)
    gamma = 0.7
    got = potential_shaping(phi, mask, gamma=gamma)
    for i in range(3):
        n = int(mask[i].sum())
        vals = [phi[i, t].item() for t in range(n)] + [0.0]
        assert got[i].item() == pytest.approx(sum(gamma * vals[t + 1] - vals[t] for t in range(n)), rel=1e-12)
    assert potential_shaping(phi, mask, gamma=1.0)[0].item() == pytest.approx(-phi[0, 0].item())  # telescopes
    (pc, mc), (pr, mr) = _masked(3, 5, 1), _masked(3, 5, 2)
    rc, rr, vc, vr = (_rand(3, 5, seed=s) for s in (3, 4, 5, 6))
    got = tvkd_loss(pc, pr, rc, rr, vc, vr, mc, mr, beta=0.1, alpha=0.5, gamma=gamma)
    for i in range(3):
        def shaped(p, r, v, m, i=i):
            n = int(m[i].sum())
            vals = [v[i, t].item() for t in range(n)] + [0.0]
            return 0.1 * sum((p[i, t] - r[i, t]).item() for t in range(n)) + 0.5 * sum(
                gamma * vals[t + 1] - vals[t] for t in range(n))
        margin = shaped(pc, rc, vc, mc) - shaped(pr, rr, vr, mr)
        assert got[i].item() == pytest.approx(math.log1p(math.exp(-margin)), rel=1e-12)
    logits = _rand(2, 3, 7, seed=9)
    assert soft_value(logits, tau=0.5)[1, 2].item() == pytest.approx(
        0.5 * math.log(sum(math.exp(x / 0.5) for x in logits[1, 2].tolist())), rel=1e-12)


def test_irepo_reference():
    pc, pr, rc, rr = (_rand(5, seed=s) for s in range(4))
    p_hat = torch.tensor([0.1, 0.5, 0.75, 0.9, 0.99], dtype=torch.float64)
    got = irepo_loss(pc, pr, rc, rr, p_hat, beta=0.3)
    for i in range(5):
        margin = 0.3 * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        assert got[i].item() == pytest.approx((margin - math.log(p_hat[i] / (1 - p_hat[i]))) ** 2, rel=1e-12)


def test_micro_mixture_reference():
    wc, wl, router = _rand(4, 3, seed=0), _rand(4, 3, seed=1), _rand(4, 3, seed=2)
    losses, reg = micro_mixture_loss(wc, wl, router, balance=0.5)
    mean_w = [0.0] * 3
    for i in range(4):
        z = [math.exp(x) for x in router[i].tolist()]
        w = [x / sum(z) for x in z]
        mean_w = [m + x / 4 for m, x in zip(mean_w, w)]
        p = sum(w[k] / (1 + math.exp(-(wc[i, k] - wl[i, k]).item())) for k in range(3))
        assert losses[i].item() == pytest.approx(-math.log(p), rel=1e-12)
    assert reg.item() == pytest.approx(0.5 * sum(m * math.log(m) for m in mean_w), rel=1e-12)


def test_pama_advantage_is_the_min_norm_point():
    adv = _rand(3, 50, seed=0)
    got = pama_advantage(adv)
    grid = torch.linspace(0, 1, 201, dtype=torch.float64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    keep = a + b <= 1 + 1e-12
    weights = torch.stack([a[keep], b[keep], 1 - a[keep] - b[keep]])           # [3, G] points of the simplex
    best = (weights.T @ adv).abs().min(dim=0).values                            # brute-force min_c |Σ c_i A_i|
    torch.testing.assert_close(got.abs(), best, atol=0.01 * adv.abs().max().item(), rtol=0)
    assert bool(((adv.min(0).values <= got) & (got <= adv.max(0).values)).all())
    assert pama_advantage(torch.tensor([[1.0], [3.0]])).item() == 1.0
    assert pama_advantage(torch.tensor([[-1.0], [3.0]])).item() == 0.0


def test_inverse_soft_q_reference_and_lambda_zero_is_mle():
    logits = _rand(2, 4, 5, seed=0)
    tokens = torch.tensor([[1, 2, 3, 0], [4, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float64)
    got = inverse_soft_q_loss(logits, tokens, mask, td_weight=0.3, gamma=0.9)
    total, count = 0.0, 0
    for i in range(2):
        n = int(mask[i].sum())
        for t in range(n):
            v = lambda s, i=i: math.log(sum(math.exp(x) for x in logits[i, s].tolist()))
            q = logits[i, t, tokens[i, t]].item()
            v_next = v(t + 1) if t + 1 < n else 0.0
            total += 0.3 * (q - 0.9 * v_next) ** 2 - (q - v(t))
            count += 1
    assert got.item() == pytest.approx(total / count, rel=1e-12)
    mle = -(torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0] * mask).sum() / mask.sum()
    assert inverse_soft_q_loss(logits, tokens, mask, td_weight=0.0).item() == pytest.approx(mle.item(), rel=1e-12)


def test_rto_rewards_gae_and_ppo_reference():
    dpo_lr, pol_lr = _rand(2, 5, seed=0), _rand(2, 5, seed=1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    seq = torch.tensor([2.0, -1.0], dtype=torch.float64)
    r = rto_token_rewards(dpo_lr, pol_lr, seq, mask, beta_dpo=0.5, beta_kl=0.1, clip=0.3)
    for i in range(2):
        n = int(mask[i].sum())
        for t in range(5):
            want = 0.0 if t >= n else (max(-0.3, min(0.3, 0.5 * dpo_lr[i, t].item())) - 0.1 * pol_lr[i, t].item()
                                       + (seq[i].item() if t == n - 1 else 0.0))
            assert r[i, t].item() == pytest.approx(want, abs=1e-12)
    values = _rand(2, 5, seed=2)
    adv, ret = gae_advantages(r, values, mask, gamma=0.9, lam=0.8)
    for i in range(2):
        n = int(mask[i].sum())
        running = 0.0
        for t in reversed(range(n)):
            nv = values[i, t + 1].item() if t + 1 < n else 0.0
            running = r[i, t].item() + 0.9 * nv - values[i, t].item() + 0.9 * 0.8 * running
            assert adv[i, t].item() == pytest.approx(running, rel=1e-10)
            assert ret[i, t].item() == pytest.approx(running + values[i, t].item(), rel=1e-10)
    logp, old = _rand(2, 5, seed=3), _rand(2, 5, seed=4)
    got = ppo_clip_loss(logp, old, adv, mask, clip=0.2)
    terms = [min(math.exp(logp[i, t] - old[i, t]) * adv[i, t].item(),
                 max(0.8, min(1.2, math.exp(logp[i, t] - old[i, t]))) * adv[i, t].item())
             for i in range(2) for t in range(5) if mask[i, t]]
    assert got.item() == pytest.approx(-sum(terms) / len(terms), rel=1e-10)


def _rso_counts(candidates: int, draws: int, bound: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p_sft = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    reward = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(4, dtype=torch.float64)
    for _ in range(draws):
        ys = torch.multinomial(p_sft, candidates, replacement=True, generator=g)
        counts += torch.bincount(ys[rso_accept(reward[ys], beta=0.5, accept=1, generator=g, reward_bound=bound)],
                                 minlength=4)
    tilted = p_sft * torch.exp(reward / 0.5)
    return counts, tilted / tilted.sum(), p_sft


@pytest.mark.parametrize("candidates, bound", [(16, 2.0), (64, None)])
def test_rso_accepted_samples_follow_the_tilted_distribution(candidates, bound):
    """π_SFT over 4 outcomes and the reward known: accepted samples follow π_SFT(y) exp(r(y)/β) / Z (chi-squared,
    3 degrees of freedom, p > 0.001), with the known bound, or with the paper's sample max at its N = 64."""
    from scipy.stats import chisquare

    counts, tilted, p_sft = _rso_counts(candidates, 3000, bound)
    assert chisquare(counts.numpy(), (tilted * counts.sum()).numpy()).pvalue > 1e-3
    assert chisquare(counts.numpy(), (p_sft * counts.sum()).numpy()).pvalue < 1e-6  # not just π_SFT


def test_rso_sample_max_is_biased_with_few_candidates():
    """The known-bad variant: the paper's r_max over only 16 candidates misses the best outcome often (0.9^16)."""
    from scipy.stats import chisquare

    counts, tilted, _ = _rso_counts(16, 3000, None)
    assert chisquare(counts.numpy(), (tilted * counts.sum()).numpy()).pvalue < 1e-3


# ---------------------------------------------------------------- equality with TRL's own DPOTrainer


TRL_TYPES = [("sigmoid", 0.0), ("hinge", 0.0), ("ipo", 0.0), ("robust", 0.1), ("exo_pair", 1e-3), ("nca_pair", 0.0),
             ("bco_pair", 0.0), ("sppo_hard", 0.0), ("apo_zero", 0.0), ("apo_down", 0.0), ("discopop", 0.0),
             ("sigmoid_norm", 0.0)]


@pytest.fixture(scope="module")
def trl_batch(grammar, tmp_path_factory):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = [json.loads(line) for line in open(grammar["pairs"])][:8]
    tok = AutoTokenizer.from_pretrained(grammar["model"])
    out = tmp_path_factory.mktemp("trl")
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])

    def trl_loss(loss_type: str, smoothing: float, policy) -> float:
        args = trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=8, loss_type=[loss_type], beta=0.2,
                             label_smoothing=smoothing, report_to=[], use_cpu=True, max_length=32,
                             bf16=False)  # TRL 1.16 defaults to bf16, and runs its reference under bf16 autocast
        trainer = trl.DPOTrainer(model=str(grammar["model"]), args=args, train_dataset=dataset, processing_class=tok)
        trainer.model.load_state_dict(policy.state_dict())
        trainer.model.eval()
        batch = next(iter(trainer.get_train_dataloader()))
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, batch).item()

    torch.manual_seed(1)
    policy = AutoModelForCausalLM.from_pretrained(grammar["model"]).eval()
    with torch.no_grad():  # move the policy away from the reference, as training would
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = AutoModelForCausalLM.from_pretrained(grammar["model"]).eval()
    data = tokenize_pairs(load_pairs(rows), tok, max_length=32)
    batch = collate_pairs(data, torch.arange(8), tok.pad_token_id)
    with torch.no_grad():
        pol = completion_logps(policy, batch.input_ids, batch.attention_mask, batch.completion_mask)
        ref = completion_logps(reference, batch.input_ids, batch.attention_mask, batch.completion_mask)
    return trl_loss, policy, pol, ref


@pytest.mark.parametrize("loss_type, smoothing", TRL_TYPES)
def test_dpo_loss_equals_trl_dpotrainer(trl_batch, loss_type, smoothing):
    trl_loss, policy, pol, ref = trl_batch
    (pc, pr), (rc, rr) = pol.total.chunk(2), ref.total.chunk(2)
    lengths = pol.lengths.chunk(2) if loss_type in ("ipo", "sigmoid_norm") else (None, None)  # TRL's ipo averages
    ours, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.2, label_smoothing=smoothing, loss_type=loss_type,
                          chosen_lengths=lengths[0], rejected_lengths=lengths[1])
    assert abs(pc - rc).max() > 0.1  # the policy differs from the reference: the comparison means something
    assert ours.mean().item() == pytest.approx(trl_loss(loss_type, smoothing, policy), rel=2e-6, abs=1e-7)


def test_trl_comparison_fails_on_a_flipped_sign(trl_batch):
    trl_loss, policy, pol, ref = trl_batch
    (pc, pr), (rc, rr) = pol.total.chunk(2), ref.total.chunk(2)
    wrong, _, _ = dpo_loss(pr, pc, rr, rc, beta=0.2)  # chosen and rejected swapped
    assert wrong.mean().item() != pytest.approx(trl_loss("sigmoid", 0.0, policy), rel=1e-3)


# ---------------------------------------------------------------- the CLI, resume, config refusal


def _seq(*args: str, cwd: Path = ROOT) -> CliResult:
    return run_cli("seq", *args, cwd=cwd)


def test_seq_train_resumes_bit_exactly(grammar, tmp_path):
    from pbrl.sequence.train import SeqRunConfig, train_sequence

    def config(reference: str = "copy", method: str = "dpo") -> SeqRunConfig:
        cfg = SeqRunConfig(model=str(grammar["model"]), data=str(grammar["pairs"]), max_length=32, reference=reference)
        cfg.method.name = method
        cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every, cfg.train.grad_accum = 6, 4, 3, 2
        return cfg

    train_sequence(config(), tmp_path / "straight", progress=False)
    train_sequence(config(), tmp_path / "split", progress=False, stop_at=3)
    train_sequence(config(), tmp_path / "split", progress=False)
    a = torch.load(tmp_path / "straight/checkpoints/step_00000006.pt", weights_only=False)["agent"]
    b = torch.load(tmp_path / "split/checkpoints/step_00000006.pt", weights_only=False)["agent"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight/model/config.json").is_file()
    # the cached reference trains to the same weights as the live copy, to float tolerance
    train_sequence(config("cache"), tmp_path / "cached", progress=False)
    c = torch.load(tmp_path / "cached/checkpoints/step_00000006.pt", weights_only=False)["agent"]
    assert (tmp_path / "cached/ref_logps.pt").is_file()
    assert all(torch.allclose(a[k], c[k], atol=1e-5) for k in a)
    irepo = config()
    irepo.method.name = "irepo"
    bare = tmp_path / "bare.jsonl"
    bare.write_text(GOOD + "\n")
    irepo.data = str(bare)
    with pytest.raises(DatasetError, match=rf"^{bare}:1: field 'preference': got missing"):
        train_sequence(irepo, tmp_path / "irepo", progress=False)
    assert not (tmp_path / "irepo").exists()
    with pytest.raises(ConfigError, match="method.beta: stored 0.1, asked 0.2"):
        changed = config()
        changed.method.beta = 0.2
        train_sequence(changed, tmp_path / "split", progress=False)


def test_seq_cli_config_model_lora_and_tensorboard(grammar, tmp_path):
    out = tmp_path / "lora"
    proc = _seq("train", "--method", "dpo", "--model", str(grammar["config"]), "--set",
                f"run.tokenizer={json.dumps(str(grammar['model']))}", "--data", str(grammar["pairs"]), "--out",
                str(out), "--steps", "4", "--batch-size", "4", "--lora", "--reference", "adapter", "--set",
                "run.lora_rank=2", "--set", "train.log_every=2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["finished"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"rewards/margins", "rewards/accuracies", "kl/chosen_logratio", "train/loss"} <= tags
    proc = _seq("train", "--method", "dpo", "--model", str(grammar["model"]), "--data", str(grammar["pairs"]),
                "--out", str(tmp_path / "x"), "--reference", "none", "--quiet")
    assert proc.returncode != 0 and "run.reference: got 'none'" in proc.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------- learning check (DESIGN §7.5)


@pytest.mark.slow
@pytest.mark.learning
def test_dpo_learns_the_preference_on_heldout_prompts(tmp_path, learned, learning_seed):
    """SFT on the grammar first (the reference), then DPO (β = 0.3) and SFT-on-chosen at equal steps on noisy pairs
    (20 % reversed). On held-out prompts DPO's samples carry the preferred word far more often than the reference's
    (about 20 %); among grammatical samples, more often than SFT-on-chosen's (which imitates the label noise); DPO
    keeps most of the reference's grammar and stays within a few nats of KL. With chosen and rejected swapped (the
    known-bad variant) the same run falls below the reference.

    The pairs are cut at ``max_length`` = 10 (prompt and six words): the end token every completion shares carries
    no preference, and with it in the loss DPO lowers its likelihood in both completions alike (likelihood
    displacement, invisible to the loss) until the policy no longer stops, in about one run in five in our trials;
    the policy keeps the reference's end. DPO still moves some mass off the grammar (nouns in adjective slots), so
    the validity bound is loose. Thresholds from scripts/diag/test_margins.py (DESIGN §7.8)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pbrl.sequence.synthetic import evaluate_policy
    from pbrl.sequence.train import SeqRunConfig, train_sequence

    threads = torch.get_num_threads()  # train_sequence sets train.threads: keep the margin study's float order
    paths = make_task(seed=learning_seed, train_prompts=400, heldout_prompts=25, sft_per_prompt=8,
                      pairs_per_prompt=8).write(tmp_path)
    tok = word_tokenizer([" ".join(NOUNS + ADJECTIVES + VERBS) + " : ."])
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "gpt2.json").write_text(json.dumps(tiny_gpt2_config(len(tok), layers=1, width=64, heads=8)))
    swapped = tmp_path / "swapped.jsonl"
    swapped.write_text("".join(json.dumps({**r, "chosen": r["rejected"], "rejected": r["chosen"]}) + "\n"
                               for r in map(json.loads, open(paths["pairs"]))))

    def run(model, data, out, method, steps, lr, max_length=10):
        cfg = SeqRunConfig(model=str(model), data=str(data), max_length=max_length, tokenizer=str(tmp_path / "tok"),
                           reference="none" if method == "sft" else "copy")
        cfg.method.name, cfg.method.beta = method, 0.3
        cfg.train.steps, cfg.train.batch_size, cfg.train.lr = steps, 32, lr
        cfg.train.log_every = cfg.train.checkpoint_every = steps
        cfg.train.seed, cfg.train.threads = learning_seed, threads
        train_sequence(cfg, tmp_path / out, progress=False)
        return tmp_path / out / "model"

    def measure(folder, kl=False):
        result = evaluate_policy(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                                 prompts, reference=reference if kl else None, samples=16, seed=learning_seed)
        return {**result, "preferred_among_valid": result["preferred_valid"] / max(result["valid"], 1e-9)}

    sft = run(tmp_path / "gpt2.json", paths["sft"], "sft", "sft", 300, 5e-3, max_length=32)
    reference = AutoModelForCausalLM.from_pretrained(sft)
    prompts = json.loads(paths["heldout"].read_text())
    base = measure(sft)
    dpo = measure(run(sft, paths["pairs"], "dpo", "dpo", 150, 2.5e-4), kl=True)
    sft_chosen = measure(run(sft, paths["pairs"], "sft-chosen", "sft", 150, 2.5e-4))
    bad = measure(run(sft, swapped, "dpo-swapped", "dpo", 150, 2.5e-4))
    context = {"sft": base, "dpo": dpo, "sft_chosen": sft_chosen, "swapped": bad}
    learned.check("reference valid", base["valid"], ">=", 0.65, context=context)  # the grammar learnt
    learned.check("dpo preferred", dpo["preferred"], ">=", 0.75, context=context)
    learned.check("dpo preferred - reference's", dpo["preferred"] - base["preferred"], ">=", 0.5, context=context)
    learned.check("dpo preferred among valid - sft-on-chosen's", dpo["preferred_among_valid"]
                  - sft_chosen["preferred_among_valid"], ">=", 0.1, context=context)
    learned.check("dpo kl", dpo["kl"], "<=", 6.0, context=context)
    learned.check("dpo valid / reference's", dpo["valid"] / base["valid"], ">=", 0.3, context=context)
    learned.check("swapped dpo preferred / reference's", bad["preferred"] / base["preferred"], "<=", 0.5, bad=True,
                  context=context)


def test_online_ppo_resumes_exactly_and_pareto_check(grammar, tmp_path):
    """RTO / PAMA's PPO on the shared loop: a run split by a checkpoint ends bit-identical to a straight one; the
    Pareto check reads 0 for opposite objectives and 1 for identical ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pbrl.sequence.online import OnlineConfig, pareto_stationarity, train_online

    prompts = sorted({json.loads(line)["prompt"] for line in open(grammar["pairs"])})[:12]
    gold = lambda p, c: float(c.split().count("gold"))
    red = lambda p, c: float(c.split().count("red"))
    cfg = OnlineConfig(prompts_per_rollout=6, minibatch=4, epochs=2, max_new_tokens=6)
    straight = train_online(str(grammar["model"]), prompts, [gold, red], cfg, str(tmp_path / "a"), steps=6, seed=1,
                            guide_dir=str(grammar["model"]))
    from pbrl.train import loop

    calls = {"n": 0}
    original = loop.train_step

    def interrupted(*args, **kwargs):  # stop the process-equivalent after step 3 by raising mid-run
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    cfg_split = OnlineConfig(prompts_per_rollout=6, minibatch=4, epochs=2, max_new_tokens=6)
    loop.train_step = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            train_online(str(grammar["model"]), prompts, [gold, red], cfg_split, str(tmp_path / "b"), steps=6, seed=1,
                         guide_dir=str(grammar["model"]))
    finally:
        loop.train_step = original
    resumed = train_online(str(grammar["model"]), prompts, [gold, red], cfg_split, str(tmp_path / "b"), steps=6,
                           seed=1, guide_dir=str(grammar["model"]))
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = AutoModelForCausalLM.from_pretrained(grammar["model"])
    tok = AutoTokenizer.from_pretrained(grammar["model"])
    opposite = pareto_stationarity(model, tok, prompts, [gold, lambda p, c: -gold(p, c)], samples=4)
    same = pareto_stationarity(model, tok, prompts, [gold, gold], samples=4)
    assert opposite["min_norm_ratio"] < 1e-6 and same["min_norm_ratio"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.learning
def test_micro_router_separates_two_groups(grammar, tmp_path, learned, learning_seed):
    """Two groups with opposite labels on the same kind of pairs: one BT head sits at chance on each group, the
    routed mixture gets both (features of a frozen random GPT-2 suffice for the target word). Thresholds from
    scripts/diag/test_margins.py (DESIGN §7.8)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pbrl.sequence.reward import MixtureRewardConfig, MixtureRewardModel
    from pbrl.train.loop import Optimizers, TrainConfig, train_step

    paths = make_task(seed=learning_seed, train_prompts=40, heldout_prompts=10, sft_per_prompt=2,
                      pairs_per_prompt=2).write(tmp_path)
    rows = [json.loads(line) for line in open(paths["pairs"])]
    both = []
    for i, r in enumerate(rows):
        better_first = r["score_chosen"] > r["score_rejected"]
        good, bad = (r["chosen"], r["rejected"]) if better_first else (r["rejected"], r["chosen"])
        group = "gold" if i % 2 else "shy"
        chosen, rejected = (good, bad) if group == "gold" else (bad, good)
        both.append({"prompt": r["prompt"], "chosen": chosen, "rejected": rejected, "group": group})
    tok = AutoTokenizer.from_pretrained(grammar["model"])
    data = tokenize_pairs(load_pairs(both), tok, max_length=32)
    batch = collate_pairs(data, torch.arange(len(data)), tok.pad_token_id)
    ctx = torch.tensor([tok(data.groups[g], add_special_tokens=False)["input_ids"] for g in data.group.tolist()])
    torch.manual_seed(learning_seed)
    backbone = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.loads(grammar["config"].read_text())))
    accuracy = {}
    for name, cfg in (("single", MixtureRewardConfig(heads=1, routed=False)), ("mixture", MixtureRewardConfig(heads=2))):
        torch.manual_seed(learning_seed)
        model = MixtureRewardModel(backbone, 32, cfg)
        opts = Optimizers(model.optimizers(), TrainConfig(steps=150, lr=3e-2, weight_decay=0.0))
        for step in range(150):  # 300 steps until 2026-12-07: the same margins at half the time (docs/testing.md)
            train_step(model, model.loss, (batch, ctx, torch.ones_like(ctx)), opts, step, amp=False, norms_wanted=False)
        with torch.no_grad():
            p = model.preference_probability(batch, ctx, torch.ones_like(ctx))
        accuracy[name] = [float((p[data.group == g] > 0.5).float().mean()) for g in range(2)]
    learned.check("mixture's accuracy, worse group", min(accuracy["mixture"]), ">=", 0.9, context=accuracy)
    learned.check("single head's |accuracy - 1/2|, worse group", max(abs(a - 0.5) for a in accuracy["single"]), "<",
                  0.4, bad=True, context=accuracy)


def test_tvkd_on_teacher_log_probs_at_tau_one_is_dpo(grammar, tmp_path):
    """TVKD's shaping form with ``method.tvkd_value = log_probs``: the soft value τ log Σ p^{1/τ} of a normalised
    teacher is 0 at τ = 1, so it trains exactly as DPO; on raw logits the same run differs."""
    from pbrl.sequence.train import SeqRunConfig, train_sequence

    def weights(method: str, **fields) -> dict[str, torch.Tensor]:
        cfg = SeqRunConfig(model=str(grammar["model"]), data=str(grammar["pairs"]), max_length=32)
        cfg.method.name = method
        for key, value in fields.items():
            setattr(cfg.method, key, value)
        cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every = 2, 4, 2
        out = tmp_path / f"{method}-{fields.get('tvkd_value', '')}-{fields.get('tvkd_top_k', '')}"
        train_sequence(cfg, out, progress=False)
        return torch.load(out / "checkpoints/step_00000002.pt", weights_only=False)["agent"]

    dpo = weights("dpo")
    normalised = weights("tvkd", teacher=str(grammar["model"]), tvkd_form="shaping", tvkd_value="log_probs",
                         tvkd_tau=1.0)
    raw = weights("tvkd", teacher=str(grammar["model"]), tvkd_form="shaping", tvkd_value="logits", tvkd_tau=1.0)
    assert all(torch.allclose(dpo[k], normalised[k], atol=1e-6) for k in dpo)
    assert not all(torch.allclose(dpo[k], raw[k], atol=1e-6) for k in dpo)
    # the official form (the default): the teacher's top-k decides the buckets, so k changes the update
    top2 = weights("tvkd", teacher=str(grammar["model"]), tvkd_top_k=2)
    top50 = weights("tvkd", teacher=str(grammar["model"]), tvkd_top_k=50)
    assert not all(torch.allclose(top2[k], top50[k], atol=1e-6) for k in top2)
