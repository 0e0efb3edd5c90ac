"""Fixes for the pinned compression stack (paddle 2.6.2, paddleslim 2.6.0, paddlenlp 2.8.1),
applied at run time by `apply()`; site-packages stay untouched. Each fix names what broke.
"""
import os

import paddle
import paddle.nn.functional as F
from paddlenlp.utils.log import logger


def _super_layer_norm_forward(self, input):
    """paddleslim's SuperLayerNorm.forward unpacks three values from paddle._C_ops.layer_norm,
    which returns one tensor in paddle 2.6 ("too many values to unpack" in DynaBERT). Same
    computation through the public functional API (single normalized dim, as paddleslim assumes)."""
    feature_dim = int(input.shape[-1])
    weight = None if self._weight_attr is False else self.weight[:feature_dim]
    bias = None if self._bias_attr is False else self.bias[:feature_dim]
    self.cur_config = {"prune_dim": feature_dim}
    return F.layer_norm(input, [feature_dim], weight=weight, bias=bias, epsilon=self._epsilon)


def _quant_embeddings(self, input_prefix):
    """paddlenlp's version passes feed *names* to paddle.static.save_inference_model, which in
    paddle 2.6 wants Variables ("'feed_vars' should be a Variable"), and leaves static mode on."""
    import paddleslim.quant as quant

    self.args.output_filename_prefix = "quant_emb"
    paddle.enable_static()
    try:
        place = paddle.set_device(self.args.device)
        exe = paddle.static.Executor(place)
        program, feed_names, fetch_targets = paddle.static.load_inference_model(input_prefix, exe)
        config = {"quantize_op_types": ["lookup_table_v2"], "lookup_table_v2": {"quantize_type": "log"}}
        quant_program = quant.quant_embedding(program, place, config)
        feed_vars = [quant_program.global_block().var(name) for name in feed_names]
        output = os.path.join(os.path.dirname(input_prefix), self.args.output_filename_prefix)
        paddle.static.save_inference_model(output, feed_vars, fetch_targets, exe, program=quant_program)
    finally:
        paddle.disable_static()


def _always_save_dynabert(original):
    """Marks the trainer while DynaBERT trains (`trainer.dynabert_running`).

    DynaBERT saves a width only when an evaluation beats the previous best (starting at 0.0);
    a short run that never evaluates, or scores 0, leaves no width_mult_*/model_state.pdparams
    and the export fails. Save the final supernet weights for such widths, with a warning."""

    def dynabert_training(self, ofa_model, model, *args, **kwargs):
        self.dynabert_running = True  # see dynabert_running()
        try:
            result = original(self, ofa_model, model, *args, **kwargs)
        finally:
            self.dynabert_running = False
        for width_mult in self.args.width_mult_list:
            width_dir = os.path.join(self.args.output_dir, "width_mult_" + str(round(width_mult, 2)))
            if not os.path.isfile(os.path.join(width_dir, "model_state.pdparams")):
                logger.warning(f"DynaBERT width {width_mult}: no evaluation beat 0 (raise the number of steps or "
                               f"lower --save_steps); saving the final weights to {width_dir}")
                os.makedirs(width_dir, exist_ok=True)
                (model._layers if isinstance(model, paddle.DataParallel) else model).save_pretrained(width_dir)
        return result

    dynabert_training.__wrapped__ = original
    return dynabert_training


def dynabert_running(trainer) -> bool:
    """Whether `trainer` is inside DynaBERT training, where ERNIE's forward is PaddleNLP's
    replacement and takes its attention mask as [mask, head_mask] (compression's evaluation hook)."""
    return getattr(trainer, "dynabert_running", False)


def _rotating_save_checkpoint(original):
    """Two fixes around each checkpoint save.

    Rotation: paddlenlp rotates checkpoints only when `local_rank == 0`, and a single-process run
    has local_rank -1: --save_total_limit was ignored and every epoch's checkpoint (64 MB for nano)
    stayed. Rotate after each save in that case, as a distributed run's rank 0 does.

    RNG state: paddle 2.6 pickles a generator state as (device, seed, offset) only
    (GeneratorState.__getstate__), so the CPU generator's position in its stream is lost in
    rng_state.pth and a resumed run drew other dropout masks than the uninterrupted one. Reseed
    the CPU generator from --seed, the step and the rank just before saving: the saved seed is
    then its whole state, and --resume_from_checkpoint continues exactly."""

    def _save_checkpoint(self, model, metrics=None):
        seed = (self.args.seed * 1_000_003 + self.state.global_step) * 1024 + self.args.process_index
        paddle.framework.core.default_cpu_generator().manual_seed(seed % 2**63)
        result = original(self, model, metrics)
        if self.args.local_rank == -1 and self.args.should_save_model_state:
            self._rotate_checkpoints(use_mtime=True, output_dir=self.args.output_dir)
        return result

    _save_checkpoint.__wrapped__ = original
    return _save_checkpoint


class _Placeholder(paddle.io.Dataset):
    def __getitem__(self, index):
        return 0

    def __len__(self):
        return 1


def _ptq_accepting_batch_generator(base):
    """paddlenlp's PTQ passes `batch_generator=` (lists of arrays); paddle 2.6's
    PostTrainingQuantization still takes the argument but only reads `data_loader`, which must
    yield feed dicts ("data_loader cannot be None"). Adapt the one to the other."""

    class PostTrainingQuantization(base):
        def __init__(self, *args, batch_generator=None, **kwargs):
            if batch_generator is None or kwargs.get("data_loader") is not None:
                return super().__init__(*args, **kwargs)
            # paddle 2.6 type-checks for a DataLoader, then only calls it for an iterator of feed
            # dicts; _feed_list is known once the model is loaded, before the first batch is drawn.
            kwargs["data_loader"] = paddle.io.DataLoader(_Placeholder(), batch_size=1, places=paddle.CPUPlace())
            super().__init__(*args, **kwargs)
            self._data_loader = lambda: (dict(zip(self._feed_list, batch)) for batch in batch_generator())

    PostTrainingQuantization.__wrapped__ = base
    return PostTrainingQuantization


def apply():
    """Install the fixes once; safe to call repeatedly."""
    from paddlenlp.trainer import Trainer, trainer_compress
    from paddleslim.nas.ofa import layers as ofa_layers

    ofa_layers.SuperLayerNorm.forward = _super_layer_norm_forward
    trainer_compress._quant_embeddings = _quant_embeddings
    if not hasattr(paddle.static.quantization.PostTrainingQuantization, "__wrapped__"):
        paddle.static.quantization.PostTrainingQuantization = _ptq_accepting_batch_generator(
            paddle.static.quantization.PostTrainingQuantization
        )
    if not hasattr(trainer_compress._dynabert_training, "__wrapped__"):
        trainer_compress._dynabert_training = _always_save_dynabert(trainer_compress._dynabert_training)
    if not hasattr(Trainer._save_checkpoint, "__wrapped__"):
        Trainer._save_checkpoint = _rotating_save_checkpoint(Trainer._save_checkpoint)
