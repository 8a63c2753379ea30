"""planflow's monitoring: metrics, the Prefect exporter, Prometheus/Alertmanager
configuration, the Alertmanager-to-Prefect bridge, and the services that run them."""
