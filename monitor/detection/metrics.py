"""The detection service's Prometheus counters and gauges, registered once on the daemon's
registry and shared by the parts of the service that count."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True, slots=True)
class DetectionMetrics:
    dropped: Counter
    sample_rate: Gauge
    embedded_texts: Counter
    cache_hits: Counter
    embed_seconds: Counter
    errors: Counter  # by stage: batch, embed, reference, checkpoint
    queue_depth: Gauge
    ood_output_dropped: Counter
    budget_texts_per_s: Gauge
    cpu_per_text_s: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DetectionMetrics:
        m = registry
        return cls(
            dropped=Counter(
                "lookout_detector_dropped",
                "Sampled texts dropped: the detection queue was full",
                registry=m,
            ),
            sample_rate=Gauge(
                "lookout_detector_sample_rate",
                "Effective share of an app's records embedded (lowered automatically under load)",
                ["app"],
                registry=m,
            ),
            embedded_texts=Counter("lookout_embedded_texts", "Texts embedded", registry=m),
            cache_hits=Counter(
                "lookout_embed_cache_hits", "Texts served from the cache", registry=m
            ),
            embed_seconds=Counter("lookout_embed_seconds", "Seconds spent embedding", registry=m),
            errors=Counter(
                "lookout_detector_errors", "Detector batches that failed", ["stage"], registry=m
            ),
            queue_depth=Gauge(
                "lookout_detector_queue_depth", "Texts waiting to be embedded", registry=m
            ),
            ood_output_dropped=Counter(
                "lookout_ood_output_dropped",
                "OOD flags not published: the bus was down",
                registry=m,
            ),
            budget_texts_per_s=Gauge(
                "lookout_detector_budget_texts_per_second",
                "Texts a second the detectors admit: detectors.max_cpu_share over the measured "
                "CPU per text, at most detectors.max_texts_per_s",
                registry=m,
            ),
            cpu_per_text_s=Gauge(
                "lookout_detector_cpu_seconds_per_text",
                "CPU the detection thread spends per text (embedding and scoring), measured",
                registry=m,
            ),
        )
