package provisioner

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/tenure-dev/tenure/pkg/natsx"
)

// registerMetrics reports each target's queue depth and open dead letters and tasks when a
// metrics reader collects (nothing is polled otherwise); Run unregisters it when it ends.
// Call latency, failures and retries come from each target's connector.Runner.
func (s *Service) registerMetrics() error {
	m := otel.Meter("tenure/provisioner")
	depth, err := m.Int64ObservableGauge("tenure.provisioner.queue.depth",
		metric.WithDescription("Provisioning commands waiting or in flight, per connector."))
	if err != nil {
		return err
	}
	dead, err := m.Int64ObservableGauge("tenure.provisioner.dead_letters",
		metric.WithDescription("Dead letters no operator has re-driven yet, per connector."))
	if err != nil {
		return err
	}
	tasks, err := m.Int64ObservableGauge("tenure.provisioner.tasks.open",
		metric.WithDescription("Open manual tasks, per connector."))
	if err != nil {
		return err
	}
	s.metrics, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		for name := range s.targets {
			at := metric.WithAttributes(attribute.String("tenure.target", name))
			if c, err := s.js.Consumer(ctx, natsx.EventsStream, workDurable(name)); err == nil {
				if info, err := c.Info(ctx); err == nil {
					o.ObserveInt64(depth, int64(info.NumPending)+int64(info.NumAckPending), at)
				}
			}
		}
		for _, q := range []struct {
			g   metric.Int64Observable
			sql string
		}{
			{dead, "SELECT connector, count(*) FROM dead_letters WHERE status = 'open' GROUP BY connector"},
			{tasks, "SELECT connector, count(*) FROM tasks WHERE status = 'open' GROUP BY connector"},
		} {
			rows, err := s.pool.Query(ctx, q.sql)
			if err != nil {
				return err
			}
			for rows.Next() {
				var conn string
				var n int64
				if err := rows.Scan(&conn, &n); err != nil {
					rows.Close()
					return err
				}
				o.ObserveInt64(q.g, n, metric.WithAttributes(attribute.String("tenure.target", conn)))
			}
			rows.Close()
		}
		return nil
	}, depth, dead, tasks)
	return err
}
