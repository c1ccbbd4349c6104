"""Models used by the lessons and the capstone."""

from course_lib.models.qwen import (
    PRESETS,
    QwenConfig,
    QwenLM,
    count_parameters,
    flops_per_token,
    lm_loss,
)

__all__ = ["PRESETS", "QwenConfig", "QwenLM", "count_parameters", "flops_per_token", "lm_loss"]
