"""The service's settings: one set of defaults and bounds for `emofuse serve` (its options) and
`serving.app.create_app` (its `settings`), so the two cannot disagree."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from emofuse.serving.workers import DEFAULT_JOB_TIMEOUT


class ServeSettings(BaseModel):
    """How the service runs and what it accepts. Every field has its default here only; a value
    out of bounds (a negative upload limit, a port outside 1-65535, an infinite duration) is
    refused when the settings are made, before any model loads.

    max_seconds, the longest recording accepted, is an hour: recordings over `segment_over`
    (WAV, FLAC, OGG) are read in blocks and predicted per speech segment, so their memory stays
    flat whatever their length, and containers that must be decoded whole are held to
    `segment_over` anyway; what an hour costs is a worker's time, which `job_timeout` and the
    bounded queue already bound. A call, an interview or a meeting is what per-segment
    prediction is for, and the live stream (`serving.stream`) takes the same hour per connection."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    host: str = Field("127.0.0.1", description="Interface to listen on (`emofuse serve` only).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port (`emofuse serve` only).")
    max_upload_mb: float = Field(20.0, gt=0, description="Largest accepted upload in MB; larger bodies are refused "
                                                         "as they arrive.")
    max_seconds: float = Field(3600.0, ge=0, description="Longest accepted recording, and audio per live stream, "
                                                         "in seconds.")
    segment_over: float | None = Field(30.0, ge=0, description="Recordings (WAV/FLAC/OGG) longer than this many "
                                                               "seconds are predicted per speech segment; other "
                                                               "containers are limited to this length. None: never.")
    workers: int = Field(1, ge=0, description="Worker processes, each with the model loaded once; 0: the model runs "
                                              "in the server process, one prediction at a time.")
    threads: int | None = Field(None, ge=1, description="Torch threads for the model (None: the Predictor's default, 1).")
    max_queue: int | None = Field(None, ge=0, description="Requests that may wait beyond those running (None: 4 "
                                                          "per worker).")
    job_timeout: float | None = Field(DEFAULT_JOB_TIMEOUT, ge=0, description="Seconds a job may run in a worker "
                                                                             "without progress before it is cut off "
                                                                             "and its worker replaced; 0 or None: "
                                                                             "no limit (worker processes only).")
    # Slow clients (slowloris): a connection is held by its head and body, never a queue place.
    header_seconds: float = Field(10.0, gt=0, le=3600, description="Seconds a connection may take to send a "
                                                                   "complete request head (from its opening, or "
                                                                   "from the previous response); then it is "
                                                                   "closed (408 if part of a head came).")
    keep_alive_seconds: float = Field(5.0, gt=0, le=3600, description="Seconds an idle keep-alive connection "
                                                                      "stays open after a response (uvicorn's "
                                                                      "timeout_keep_alive).")
    body_seconds: float = Field(60.0, gt=0, le=3600, description="Seconds an upload's body may take to arrive "
                                                                 "(408 after).")
    body_grace: float = Field(5.0, ge=0, le=3600, description="Seconds an upload may arrive at any rate before "
                                                              "body_rate_kb applies.")
    body_rate_kb: float = Field(8.0, ge=0, description="Average kB (1000 bytes) per second an upload must have "
                                                       "arrived at, since its request began, once body_grace has "
                                                       "passed (408 below); 0: no minimum.")
    max_readers: int = Field(16, ge=1, description="Uploads read at once (503 beyond); memory held by bodies is at "
                                                   "most (max_readers + workers + max_queue) x max_upload_mb.")
