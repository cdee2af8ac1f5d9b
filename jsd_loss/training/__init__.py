from jsd_loss.training._metric_logger import JSONLMetricLogger, read_metrics

__all__ = ["JSONLMetricLogger", "read_metrics"]
