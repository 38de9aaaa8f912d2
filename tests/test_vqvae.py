"""The VQ-VAE family: the quantiser (nearest codes, EMA, restarts, k-means, processes in step), the tokenizer
interface, the GPT-2 prior over the codes (saved in prior/, from a folder and from the Hub), `hf-vae train-prior`,
`hf-vae encode` and `hf-vae evaluate`, and a brief real-MNIST run. The shared checks are in test_families.py."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import datasets
import pytest
import torch
import torch.multiprocessing as mp
from accelerate.state import AcceleratorState
from family_tester import seeded, tiny_dataset  # noqa: F401  (the fixture)
from hub_server import subprocess_env
from test_hub import run_python

from hf_vae.cli import main as cli_main
from hf_vae.code_prior import PRIOR_FOLDER, build_prior, code_log_prob
from hf_vae.configuration_vqvae import VQVAEConfig
from hf_vae.data import evaluation_images, load_splits, to_pixel_values
from hf_vae.evaluation import load_split
from hf_vae.families import load_pretrained
from hf_vae.modeling_vqvae import VQVAEModel
from hf_vae.quantization import VectorQuantizer

TINY = {"conv_channels": [4, 8], "num_res_blocks": 0, "embedding_dim": 3, "codebook_size": 8}


def tiny_model(seed: int = 0, **overrides) -> VQVAEModel:
    torch.manual_seed(seed)
    return VQVAEModel(VQVAEConfig(**{**TINY, **overrides}))


def binary_pixels(count: int, seed: int) -> torch.Tensor:
    return (torch.rand(count, 1, 28, 28, generator=seeded(seed)) < 0.3).float()


# ---------------------------------------------------------------------------------------------- the quantiser
def test_the_quantiser_returns_the_nearest_codes():
    quantizer = VectorQuantizer(16, 5).eval()
    quantizer.embedding.copy_(torch.randn(16, 5, generator=seeded(1)))
    vectors = torch.randn(300, 5, generator=seeded(2), requires_grad=True)
    quantized = quantizer(vectors)
    brute_force = torch.stack([((quantizer.embedding - vector) ** 2).sum(1).argmin() for vector in vectors.detach()])
    assert torch.equal(quantized.indices, brute_force)
    torch.testing.assert_close(quantized.straight_through, quantizer.embedding[brute_force])
    torch.testing.assert_close(quantized.commitment, ((vectors - quantizer.embedding[brute_force]) ** 2).sum(1))
    quantized.straight_through.sum().backward()  # straight through: the identity's gradient
    assert torch.equal(vectors.grad, torch.ones_like(vectors))


def test_ema_moves_codes_towards_their_vectors_in_training_mode_only():
    quantizer = VectorQuantizer(2, 2, decay=0.9, epsilon=0.0, dead_code_steps=0)
    quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    quantizer.ema_embed_sum.copy_(quantizer.embedding)
    vectors = torch.tensor([[1.0, 1.0], [1.0, 3.0], [9.0, 9.0]])  # two to code 0 (mean (1, 2)), one to code 1
    before = {name: buffer.clone() for name, buffer in quantizer.named_buffers()}
    quantizer.eval()(vectors)
    assert all(torch.equal(buffer, before[name]) for name, buffer in quantizer.named_buffers())
    quantizer.train()(vectors)
    # N = 0.9 * 1 + 0.1 * n, m = 0.9 * e + 0.1 * sum, e = m / N
    expected = torch.tensor([[0.1 * 2 / 1.1, 0.1 * 4 / 1.1], [(9 + 0.9) / 1.0, (9 + 0.9) / 1.0]])
    torch.testing.assert_close(quantizer.embedding, expected)
    assert (quantizer.embedding[0] - torch.tensor([1.0, 2.0])).norm() < torch.tensor([1.0, 2.0]).norm()
    for _ in range(200):
        quantizer(vectors)
    torch.testing.assert_close(quantizer.embedding, torch.tensor([[1.0, 2.0], [9.0, 9.0]]), atol=1e-4, rtol=0)


def test_a_dead_code_is_restarted_from_an_encoder_output():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(3, 2, dead_code_steps=3).train()
    quantizer.embedding.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [1e6, 1e6]]))  # code 2 is never nearest
    quantizer.ema_embed_sum.copy_(quantizer.embedding)
    vectors = torch.rand(50, 2, generator=seeded(3))
    for step in range(2):
        quantizer(vectors)
        assert quantizer.steps_unused[2] == step + 1 and quantizer.embedding[2, 0] > 1e5
    quantizer(vectors)  # the third unused step: re-seeded from one of the batch's vectors
    assert quantizer.steps_unused[2] == 0
    assert ((vectors - quantizer.embedding[2]).abs().sum(1) == 0).any()
    assert quantizer.ema_cluster_size[2] == 1.0


def test_kmeans_initialisation_runs_once_on_the_first_training_batch():
    quantizer = VectorQuantizer(4, 2, kmeans_init=True, dead_code_steps=0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    vectors = (centres.repeat(25, 1) + 0.01 * torch.randn(100, 2, generator=seeded(4))).requires_grad_()
    assert quantizer.initialized == 0
    quantizer.eval()(vectors)
    assert quantizer.initialized == 0  # not in eval mode
    torch.manual_seed(0)
    quantizer.train()(vectors)
    assert quantizer.initialized == 1
    found = quantizer.embedding[quantizer.embedding[:, 0].argsort(stable=True)]
    assert torch.cdist(centres, quantizer.embedding).min(1).values.max() < 0.05, found


def _start_codebook(quantizer: VectorQuantizer) -> VectorQuantizer:
    quantizer.embedding.copy_(torch.arange(12.0).view(4, 3) / 12)
    quantizer.embedding[3] = 1e3  # never chosen: restarted after one unused step when restarts are on
    quantizer.ema_embed_sum.copy_(quantizer.embedding)
    return quantizer


def _ddp_worker(rank: int, port: int, vectors: torch.Tensor, folder: Path) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(rank)  # different random states: restarts must still agree
    for dead_code_steps in (0, 1):
        quantizer = _start_codebook(VectorQuantizer(4, 3, dead_code_steps=dead_code_steps).train())
        for _ in range(3):
            quantizer(vectors[rank])
        torch.save(dict(quantizer.named_buffers()), folder / f"{rank}-{dead_code_steps}.pt")
    torch.distributed.destroy_process_group()


def test_ema_and_restarts_agree_across_processes(tmp_path):
    """Two gloo processes, each quantising its own half of the vectors, make the update of one process on both
    halves (counts and sums all-reduced), and restart the same dead code with the same vector."""
    vectors = torch.rand(2, 20, 3, generator=seeded(5))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(port, vectors, tmp_path), nprocs=2, join=True, start_method="fork")
    results = {
        (rank, steps): torch.load(tmp_path / f"{rank}-{steps}.pt") for rank in (0, 1) for steps in (0, 1)
    }
    single = _start_codebook(VectorQuantizer(4, 3, dead_code_steps=0).train())
    for _ in range(3):
        single(vectors.reshape(40, 3))
    for name, buffer in single.named_buffers():
        torch.testing.assert_close(results[(0, 0)][name], buffer)
        torch.testing.assert_close(results[(1, 0)][name], buffer)
    restarted = results[(0, 1)]
    assert all(torch.equal(restarted[name], results[(1, 1)][name]) for name in restarted)
    assert restarted["embedding"][3].abs().max() <= 1  # one of the vectors, all in [0, 1)


# ---------------------------------------------------------------------------------------------- the tokenizer
def test_decode_indices_of_encode_equals_decoding_the_quantised_vectors():
    model = tiny_model().eval()
    pixels = binary_pixels(6, 6)
    encoded = model.encode(pixels)
    assert encoded.indices.shape == (6, 7, 7) and encoded.indices.dtype == torch.long
    assert encoded.indices.min() >= 0 and encoded.indices.max() < 8
    expected = model.decoder(model.quantizer.embedding[encoded.indices].permute(0, 3, 1, 2))
    torch.testing.assert_close(model.decode_indices(encoded.indices).logits, expected)
    torch.testing.assert_close(model.decode(encoded.quantized).logits, expected)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 8\)"):
        model.decode_indices(torch.full((1, 7, 7), 8))


def test_codebook_lives_in_the_state_dict_and_is_a_parameter_only_for_the_loss_update():
    ema, loss = tiny_model(), tiny_model(codebook_update="loss")
    assert "quantizer.embedding" in ema.state_dict() and "quantizer.ema_embed_sum" in ema.state_dict()
    assert "quantizer.embedding" not in dict(ema.named_parameters())
    assert "quantizer.embedding" in dict(loss.named_parameters())
    outputs = loss.train()(binary_pixels(4, 7))
    assert "codebook_loss" in outputs.loss_terms
    outputs.loss.backward()
    assert loss.quantizer.embedding.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- the prior
def with_prior(model: VQVAEModel, num_classes: int | None = 10, seed: int = 1) -> VQVAEModel:
    torch.manual_seed(seed)
    prior = build_prior(model.config.codebook_size, model.config.grid_size, num_classes, 1, 16, 2, 0.0)
    model.set_code_prior(prior)
    return model


def test_the_prior_round_trips_through_from_pretrained(tmp_path):
    model = with_prior(tiny_model())
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= {path.name for path in (tmp_path / PRIOR_FOLDER).iterdir()}
    loaded = load_pretrained(tmp_path)
    assert loaded.code_prior is not None
    expected, actual = model.code_prior.state_dict(), loaded.code_prior.state_dict()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    pixels = binary_pixels(4, 8)
    torch.testing.assert_close(loaded.log_weights(pixels, 1), model.log_weights(pixels, 1))
    for labels in (None, 3):
        first = model.sample(4, generator=seeded(9), labels=labels, temperature=0.8, top_k=5)
        assert torch.equal(loaded.sample(4, generator=seeded(9), labels=labels, temperature=0.8, top_k=5), first)
    assert load_pretrained(tmp_path).code_prior is not None and tiny_model().code_prior is None


def test_the_marginal_code_likelihood_sums_the_classes():
    model = with_prior(tiny_model(), num_classes=3)
    indices = torch.randint(8, (5, 7, 7), generator=seeded(10))
    prior = model.code_prior
    given = []
    for label in range(3):
        tokens = torch.cat([torch.full((5, 1), 8), torch.full((5, 1), 9 + label), indices.flatten(1)], dim=1)
        log_probs = torch.log_softmax(prior(input_ids=tokens).logits[:, :-1], -1)
        given.append(log_probs.gather(2, tokens[:, 1:, None])[:, 1:, 0].sum(1))  # log p(codes | c)
    begin = torch.full((1, 1), 8)
    class_log_probs = torch.log_softmax(prior(input_ids=begin).logits[0, -1], -1)[9:12]
    joint = torch.stack(given) + class_log_probs.unsqueeze(1)
    torch.testing.assert_close(code_log_prob(prior, indices, torch.full((5,), 2)), joint[2])
    torch.testing.assert_close(model.code_log_prob(indices), torch.logsumexp(joint, 0))
    assert (model.code_log_prob(indices, torch.full((5,), 2)) <= model.code_log_prob(indices)).all()
    uniform = tiny_model().code_log_prob(indices)
    torch.testing.assert_close(uniform, torch.full((5,), -49 * torch.log(torch.tensor(8.0)).item()))


def test_generated_codes_follow_the_asked_class_and_stay_codes():
    model = with_prior(tiny_model())
    from hf_vae.code_prior import generate_codes

    codes = generate_codes(model.code_prior, 6, seeded(11), labels=torch.arange(6))
    assert codes.shape == (6, 7, 7) and codes.min() >= 0 and codes.max() < 8
    unlabelled = generate_codes(model.code_prior, 6, seeded(11))
    assert unlabelled.shape == (6, 7, 7) and unlabelled.max() < 8


def test_the_prior_loads_from_the_hub(tmp_path, hub_server, hub_token, hub_repo_id):
    model = with_prior(tiny_model())
    model.save_pretrained(tmp_path / "model")
    from hf_vae.hub import push_to_hub

    push_to_hub(tmp_path / "model", hub_repo_id, token=hub_token, endpoint=hub_server)
    env = subprocess_env(hub_server, None, tmp_path / "hf_home")
    pulled = run_python(
        """
        import sys
        from safetensors.torch import save_file
        from hf_vae.modeling_vqvae import VQVAEModel

        model = VQVAEModel.from_pretrained(sys.argv[1])
        save_file({name: tensor.clone() for name, tensor in model.code_prior.state_dict().items()}, "prior.safetensors")
        """,
        env,
        tmp_path,
        hub_repo_id,
    )
    assert pulled.returncode == 0, pulled.stderr
    from safetensors.torch import load_file

    remote = load_file(tmp_path / "prior.safetensors")
    assert all(torch.equal(remote[name], tensor) for name, tensor in model.code_prior.state_dict().items())


# ---------------------------------------------------------------------------------------------- the commands
def test_train_prior_encode_and_evaluate(tiny_dataset, tmp_path):  # noqa: F811
    model_dir = tmp_path / "vqvae"
    tiny_model(binarize="dynamic").save_pretrained(model_dir)
    try:
        assert cli_main(
            ["train-prior", "--model", str(model_dir), "--dataset_name", str(tiny_dataset), "--num_train_epochs", "2",
             "--num_layers", "1", "--hidden_size", "16", "--num_heads", "2", "--per_device_train_batch_size", "16",
             "--validation_split", "0.2", "--disable_tqdm", "true"]  # fmt: skip
        ) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    results = json.loads((model_dir / "prior_results.json").read_text())
    assert results["class_tokens"] == 10 and results["best_epoch"] in (1, 2)
    assert len((model_dir / "prior_metrics.csv").read_text().splitlines()) == 3
    loaded = load_pretrained(model_dir)
    assert loaded.code_prior is not None and loaded.code_prior.config.vq_num_classes == 10

    codes_dir = tmp_path / "codes"
    assert cli_main(["encode", "--model", str(model_dir), "--dataset_name", str(tiny_dataset), "--output_dir",
                     str(codes_dir), "--max_samples", "10"]) == 0  # fmt: skip
    codes = datasets.load_from_disk(str(codes_dir))
    assert set(codes) == {"train", "test"} and codes["test"].column_names == ["indices", "label"]
    first = codes["test"].with_format("torch")["indices"][:10]
    assert first.shape == (10, 7, 7)
    test_images = evaluation_images(load_splits(str(tiny_dataset)).test, "dynamic", seed=0).images[:10]
    assert torch.equal(first.long(), load_pretrained(model_dir).encode(to_pixel_values(test_images)).indices)
    evaluation = tmp_path / "evaluation.json"
    assert cli_main(["evaluate", str(model_dir), "--dataset_name", str(tiny_dataset), "--max_eval_samples", "10",
                     "--output", str(evaluation)]) == 0  # fmt: skip
    figures = json.loads(evaluation.read_text())
    assert figures["likelihood_bound"] == pytest.approx(figures["reconstruction_nll"] + figures["prior_nll"])
    assert figures["iwae_nll"] == pytest.approx(figures["likelihood_bound"])
    assert 0 < figures["codebook_usage"] <= 1 and 1 <= figures["codebook_perplexity"] <= 8
    assert figures["code_prior"].startswith("GPT2LMHeadModel")
    assert figures["prior_nll_is"] == "-log p(z, c) at the true class c"  # the data has labels: one pass, not ten
    from hf_vae.visualization import plot_samples

    figure = plot_samples(loaded, seed=0)
    assert figure.axes[0].get_title() == "Samples from the prior, one row per class"


def test_encode_refuses_a_gaussian_vae(tiny_dataset, tmp_path, capsys):  # noqa: F811
    from hf_vae import VAEConfig, VAEModel

    VAEModel(VAEConfig(latent_dim=2, hidden_sizes=[8])).save_pretrained(tmp_path / "vae")
    status = cli_main(["encode", str(tmp_path / "vae"), "--dataset_name", str(tiny_dataset), "--output_dir",
                       str(tmp_path / "codes")])  # fmt: skip
    assert status == 1 and "continuous latents, not codes" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- real data
def test_a_brief_real_mnist_run_raises_code_usage_and_lowers_reconstruction(mnist_dir: Path):
    torch.manual_seed(0)
    model = VQVAEModel(VQVAEConfig.from_preset("mnist-vqvae", num_res_blocks=0, dead_code_steps=10))
    images = load_split(str(mnist_dir), model.config, "train", max_samples=4340).images  # 60 batches of 64, 500
    held_out = to_pixel_values(images[3840:], "dynamic", seeded(12))

    def figures() -> tuple[float, float]:
        summary = model.evaluation_summary(model.evaluation_figures(held_out))
        return summary["codebook_usage"], summary["reconstruction_nll"]

    usage_before, reconstruction_before = figures()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = seeded(13)
    model.train()
    for step in range(60):
        batch = to_pixel_values(images[step * 64 : (step + 1) * 64], "dynamic", generator)
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    usage_after, reconstruction_after = figures()
    assert usage_after > usage_before + 0.3, (usage_before, usage_after)
    assert reconstruction_after < reconstruction_before - 100, (reconstruction_before, reconstruction_after)
