"""The embedded real models learn the embedded real data: a short fine-tune beats chance by a clear margin."""

from hfft import fine_tune


def test_minilm_learns_rotten_tomatoes(tmp_path):
    result = fine_tune(model="hfft:minilm-l6", data="hfft:rotten-tomatoes", output_dir=str(tmp_path / "text"),
                       max_train_samples=320, max_eval_samples=300, max_length=48, freeze_epochs=1, epochs=2,
                       batch_size=16, eval_strategy="no", save_strategy="no")
    assert result.metrics["eval_examples"] == 300
    assert result.metrics["accuracy"] >= 0.65, result.metrics  # chance: 0.5 (balanced)


def test_efficientnet_lite0_learns_fashion_mnist(tmp_path):
    result = fine_tune(model="hfft:efficientnet-lite0", data="hfft:fashion-mnist", output_dir=str(tmp_path / "img"),
                       max_train_samples=480, max_eval_samples=300, image_size=96, freeze_epochs=1, epochs=3,
                       batch_size=16, eval_strategy="no", save_strategy="no")
    assert result.metrics["accuracy"] >= 0.5, result.metrics  # chance: 0.1 (10 balanced classes)
