"""Real HuggingFace models, built tiny from config objects (never downloaded), trained without
adapters and compared with plain PyTorch loops over the same batches."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import MemoryLogger, make_trainer
from torch.utils.data import DataLoader

from lightning_losses import LossDictModule

transformers = pytest.importorskip("transformers")


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def plain_loop(model, batches, step_loss=lambda out: out.loss):
    """The reference: the loop every HuggingFace example writes."""
    model = copy.deepcopy(model)
    model.train()
    optimizer = sgd(model.parameters())
    outputs = []
    for batch in batches:
        optimizer.zero_grad()
        out = model(**batch)
        step_loss(out).backward()
        optimizer.step()
        outputs.append(out)
    return model, outputs


def assert_same_parameters(ours, theirs):
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(a, b), name


def logged(logger: MemoryLogger, name: str) -> list[float]:
    return [value for _, value in logger.series(name)]


# ---------------------------------------------------------------- a classifier: model(**batch)


def tiny_bert():
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def token_batches(n=4, labels=lambda g: torch.randint(0, 3, (4,), generator=g)):
    g = torch.Generator().manual_seed(1)
    return [
        {
            "input_ids": torch.randint(0, 40, (4, 7), generator=g),
            "attention_mask": torch.ones(4, 7, dtype=torch.long),
            "labels": labels(g),
        }
        for _ in range(n)
    ]


def test_a_sequence_classifier_trains_from_its_own_batches_exactly_as_a_plain_loop():
    model, batches = tiny_bert(), token_batches()
    reference, outputs = plain_loop(model, batches)
    logger = MemoryLogger()
    module = LossDictModule(model, optimizer=sgd)
    make_trainer(logger=logger, log_every_n_steps=1).fit(
        module, DataLoader(batches, batch_size=None)
    )
    assert logged(logger, "train/loss") == pytest.approx([float(o.loss) for o in outputs], rel=1e-6)
    assert_same_parameters(module.model, reference)
    assert not any(name.startswith("train/logits") for _, row in logger.rows for name in row)


def test_metrics_of_a_huggingface_classifier_read_its_logits_and_labels():
    from torchmetrics.classification import MulticlassAccuracy

    model, batches = tiny_bert(), token_batches()
    module = LossDictModule(model, metrics={"acc": MulticlassAccuracy(3, average="micro")})
    (result,) = make_trainer().validate(module, DataLoader(batches, batch_size=None), verbose=False)
    model.eval()
    with torch.no_grad():
        hits = [(model(**b).logits.argmax(-1) == b["labels"]).float() for b in batches]
    assert result["val/acc"] == pytest.approx(float(torch.cat(hits).mean()))
    assert result["val/loss"] > 0


# ---------------------------------------------------------------- MoE: loss includes aux_loss

COEF = 0.02


def tiny_mixtral():
    config = transformers.MixtralConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=COEF,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.MixtralForCausalLM(config)


def lm_batches(n=3):
    g = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(n):
        ids = torch.randint(0, 50, (2, 9), generator=g)
        batches.append({"input_ids": ids, "labels": ids})
    return batches


def test_moe_loss_next_to_aux_loss_is_an_error_that_names_total_key():
    module = LossDictModule(tiny_mixtral())
    with pytest.raises(
        ValueError, match=r"next to other loss terms \('aux_loss'\).*total_key='loss'"
    ):
        make_trainer(max_steps=1).fit(module, DataLoader(lm_batches(1), batch_size=None))


def test_moe_total_key_trains_on_out_loss_and_logs_aux_loss_as_its_part():
    model, batches = tiny_mixtral(), lm_batches()
    reference, outputs = plain_loop(model, batches)
    logger = MemoryLogger()
    module = LossDictModule(model, total_key="loss", optimizer=sgd)
    trainer = make_trainer(logger=logger, log_every_n_steps=1)
    trainer.fit(
        module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None)
    )

    assert_same_parameters(module.model, reference)  # out.loss, backpropagated as it is
    assert logged(logger, "train/loss") == pytest.approx([float(o.loss) for o in outputs], rel=1e-6)
    aux = logged(logger, "train/aux_loss")
    assert aux == pytest.approx([float(o.aux_loss) for o in outputs], rel=1e-6)
    # the logged values reproduce out.loss: the next-token cross-entropy plus COEF * aux_loss
    for out, batch, total, part in zip(outputs, batches, logged(logger, "train/loss"), aux):
        ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
        assert total == pytest.approx(float(ce) + COEF * part, rel=1e-5)
    assert "val/loss" in trainer.callback_metrics and "val/aux_loss" in trainer.callback_metrics
    assert not [name for _, row in logger.rows for name in row if name.startswith("weight/")]


# ---------------------------------------------------------------- DETR: loss_dict


def tiny_detr():
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(
            num_channels=3,
            embedding_size=8,
            hidden_sizes=[8, 8, 8, 16],
            depths=[1, 1, 1, 1],
            out_features=["stage4"],
        ),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        num_queries=5,
        num_labels=3,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    torch.manual_seed(0)
    return transformers.DetrForObjectDetection(config)


def detr_batches(n=3):
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(n):
        labels = []
        for _ in range(2):
            k = int(torch.randint(1, 3, (), generator=g))
            centres = torch.rand(k, 2, generator=g) * 0.5 + 0.25
            sizes = torch.rand(k, 2, generator=g) * 0.2 + 0.1
            labels.append(
                {
                    "class_labels": torch.randint(0, 3, (k,), generator=g),
                    "boxes": torch.cat([centres, sizes], dim=1),
                }
            )
        batches.append({"pixel_values": torch.randn(2, 3, 64, 64, generator=g), "labels": labels})
    return batches


DETR_PARTS = ("loss_ce", "loss_bbox", "loss_giou")


def detr_weights(config) -> dict[str, float]:
    return {
        "loss_ce": 1.0,
        "loss_bbox": config.bbox_loss_coefficient,
        "loss_giou": config.giou_loss_coefficient,
    }


def test_detr_total_key_logs_every_part_and_the_parts_reproduce_out_loss():
    model, batches = tiny_detr(), detr_batches()
    weights = detr_weights(model.config)
    reference, outputs = plain_loop(model, batches)
    logger = MemoryLogger()
    module = LossDictModule(model, total_key="loss", optimizer=sgd)
    make_trainer(logger=logger, log_every_n_steps=1).fit(
        module, DataLoader(batches, batch_size=None)
    )

    assert_same_parameters(module.model, reference)
    totals = logged(logger, "train/loss")
    assert totals == pytest.approx([float(o.loss) for o in outputs], rel=1e-6)
    parts = {k: logged(logger, f"train/loss_dict/{k}") for k in (*DETR_PARTS, "cardinality_error")}
    for name, values in parts.items():
        assert values == pytest.approx([float(o.loss_dict[name]) for o in outputs], rel=1e-6), name
    for step, total in enumerate(totals):
        assert total == pytest.approx(
            sum(weights[k] * parts[k][step] for k in DETR_PARTS), rel=1e-6
        )


def test_detr_terms_chosen_and_weighted_by_us_reproduce_out_loss_with_weights_logged():
    model, batches = tiny_detr(), detr_batches()
    weights = detr_weights(model.config)
    reference, outputs = plain_loop(model, batches)
    logger = MemoryLogger()
    module = LossDictModule(
        model,
        loss_keys=[f"loss_dict/{k}" for k in DETR_PARTS],
        loss_weights={f"loss_dict/{k}": w for k, w in weights.items()},
        optimizer=sgd,
    )
    make_trainer(logger=logger, log_every_n_steps=1).fit(
        module, DataLoader(batches, batch_size=None)
    )

    # the same objective, summed by us instead of by DETR: equal to float32 rounding
    assert logged(logger, "train/loss") == pytest.approx([float(o.loss) for o in outputs], rel=1e-6)
    assert logged(logger, "weight/loss_dict/loss_bbox") == [weights["loss_bbox"]] * 3
    assert logged(logger, "weight/loss_dict/loss_giou") == [weights["loss_giou"]] * 3
    for (name, a), (_, b) in zip(module.model.named_parameters(), reference.named_parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
