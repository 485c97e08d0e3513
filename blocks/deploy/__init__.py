"""Deployment stage: the INT8 student → an ESP-IDF firmware project → a board (or an emulator).

One module per concept:

* :mod:`.model` — the ``.tflite`` flatbuffer as the firmware sees it (ops, I/O quantisation,
  MACs), the op resolver, the C array, the firmware's input quantisation rule;
* :mod:`.arena` — tensor arena measurement (host TFLM) and planning (ESP-NN scratch, RAM region);
* :mod:`.size` — flash / RAM / latency report;
* :mod:`.project` — rendering the jinja2 templates (``templates/esp32s3/``) into a project;
* :mod:`.idf` — the ESP-IDF driver (``idf.py``);
* :mod:`.flash` — esptool flashing from ``build/flasher_args.json``;
* :mod:`.capture` — serial capture of the ``CRYB/1`` log; :mod:`.bench` — its benchmark summary;
* :mod:`.config` — runtime configuration over the serial console.

The log format itself (:mod:`cryblock.logformat`) and the detector's Python twin
(:mod:`cryblock.detector`) live in the core package: the learning stage uses them too.
"""
