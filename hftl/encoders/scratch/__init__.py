"""Small encoders trained from scratch, as real transformers models (no pretrained weights needed).

When no pretrained encoder exists offline, these give a recipe a backbone that trains in minutes on
CPU. They are ``PreTrainedModel`` subclasses registered with ``AutoConfig`` / ``AutoModel`` when
:mod:`hftl.encoders` is imported, so ``save_pretrained`` / ``AutoModel.from_pretrained(dir)``
round-trip (safetensors) and every hftl code path that loads a model works unchanged.

- :class:`LeNetConfig` (``hftl-lenet``): the LeNet of ADDA (Tzeng et al., 2017) and TLlib's digit
  benchmarks (MNIST <-> USPS), for 28x28 grayscale digits.
- :class:`SpeechCNNTransformerConfig` (``hftl-speech-cnn-transformer``): a conv front end (time
  subsampling x4) and a tiny pre-norm transformer on log-mel filter banks, like the encoder of
  fairseq's speech-to-text transformer, scaled down.

Example (YAML):

.. code-block:: yaml

    encoder:
      _component_: hftl.encoders.VisionEncoder
      model: {_component_: hftl.encoders.LeNetConfig, hidden_size: 500}
      processor:
        _component_: transformers.ViTImageProcessor
        size: {height: 28, width: 28}
        image_mean: [0.5]
        image_std: [0.5]
        do_convert_rgb: false
"""

from transformers import AutoConfig, AutoModel

from hftl.encoders.scratch.lenet import LeNetConfig, LeNetModel
from hftl.encoders.scratch.speech import InputLayout, SpeechCNNTransformerConfig, SpeechCNNTransformerModel

__all__ = [
    "InputLayout",
    "LeNetConfig",
    "LeNetModel",
    "SpeechCNNTransformerConfig",
    "SpeechCNNTransformerModel",
]

for _config, _model in ((LeNetConfig, LeNetModel), (SpeechCNNTransformerConfig, SpeechCNNTransformerModel)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
