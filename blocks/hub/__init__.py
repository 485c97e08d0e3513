"""Hub stage: many monitors, one home hub.

One module per concept:

* :mod:`.db` — SQLAlchemy models, Alembic migrations (``migrations/``), idempotent writes;
* :mod:`.broker` — MQTT connection settings (``mqtt://`` / ``mqtts://`` URLs) and a private
  Mosquitto for tests and benchmarks;
* :mod:`.collector` — ``cryblock collect``: broker → database, acknowledged only after commit;
* :mod:`.opinion` — the second opinion: the hub model (trained in ``cryblock train`` on the
  teacher's embeddings) and the teacher on the audio around an alert;
* :mod:`.simulate` — simulated monitors speaking the message spec (tests, ``bench/fleet.py``);
* :mod:`.dashboard` — ``cryblock dashboard``: devices, alerts, second opinions, snippets.

The message spec itself (:mod:`cryblock.mqttformat`) lives in the core package: the firmware
templates follow it too.
"""
