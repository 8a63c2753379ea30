"""Predictive maintenance for a production line: sensor features fork into an anomaly
model and a remaining-useful-life model, joined by the maintenance planner.

Resource specs are measured at default parameters on a 2-core machine
(peak RSS ~0.25 GiB), rounded up.
The sensor data and its features are cached across runs (`cache="inputs"`).
"""

from planflow import Pipeline, component, to_flow

from flows.predictive_maintenance import steps

sensor_readings = component(steps.sensor_readings, cpu=1, mem_gib=0.5, est_seconds=0.5, cache="inputs")
sensor_features = component(steps.sensor_features, cpu=2, mem_gib=0.5, est_seconds=0.5, cache="inputs")
anomaly_model = component(steps.anomaly_model, cpu=1, mem_gib=0.5, est_seconds=4.0)
rul_model = component(steps.rul_model, cpu=1, mem_gib=0.75, est_seconds=9.0)
maintenance_plan = component(steps.maintenance_plan, cpu=1, mem_gib=0.5, est_seconds=0.5)

pipeline = Pipeline(
    "predictive-maintenance",
    [sensor_readings, sensor_features, anomaly_model, rul_model, maintenance_plan],
    description="Production-line maintenance: sensor features, anomaly detection and "
    "remaining-useful-life regression in parallel, joined into a crew-limited maintenance plan.",
)
predictive_maintenance = to_flow(pipeline)
