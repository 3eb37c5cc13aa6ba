"""Deployable exports beyond the ONNX graphs (``compress.export_onnx``) and TensorRT engines
(``compress.export_tensorrt``): transformers folders (``hf``, with the self-contained
``modeling_nas_llm`` they carry), onnxruntime-genai folders (``genai``), graph compaction
(``compact``) and the parity limits every export is checked against (``parity``)."""
