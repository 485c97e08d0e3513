"""cryblock: YAMNet → tiny INT8 audio detector for microcontrollers.

Stages: ``cryblock.blocks.dsp`` (log-mel patches) → ``cryblock.blocks.learn.teacher`` (YAMNet)
→ ``cryblock.blocks.learn`` (distillation, INT8 export) → ``cryblock.blocks.deploy`` (ESP32-S3 project, flash, serial capture).
One :class:`cryblock.params.Params` object flows through all of them.
"""
__version__ = "0.1.0"
