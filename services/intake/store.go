package intake

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// record is a worker's current registry row.
type record struct {
	worker        *eventsv1.Worker
	effectiveTime time.Time
	updatedAt     time.Time
	lastEventID   string
	source        string
}

// querier is what pool and tx have in common.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const workerColumns = `worker_id, worker_type, status, given_name, family_name, email, job_code, department,
	manager_id, location, start_date, end_date, sponsor_id, vendor_org, effective_time, last_event_id, source, updated_at`

// loadWorker reads a worker's current record; nil when the registry does not hold it.
// forUpdate locks the row until the transaction ends.
func loadWorker(ctx context.Context, q querier, id string, forUpdate bool) (*record, error) {
	sql := "SELECT " + workerColumns + " FROM workers WHERE worker_id = $1"
	if forUpdate {
		sql += " FOR UPDATE"
	}
	r, err := scanRecord(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("intake: load worker: %w", err)
	}
	return r, nil
}

// scanRecord reads a row of workerColumns.
func scanRecord(row pgx.Row) (*record, error) {
	w := &eventsv1.Worker{}
	r := &record{worker: w}
	var wt, st string
	err := row.Scan(&w.WorkerId, &wt, &st, &w.GivenName, &w.FamilyName, &w.Email, &w.JobCode,
		&w.Department, &w.ManagerId, &w.Location, &w.StartDate, &w.EndDate, &w.SponsorId, &w.VendorOrg,
		&r.effectiveTime, &r.lastEventID, &r.source, &r.updatedAt)
	if err != nil {
		return nil, err
	}
	w.WorkerType = workerTypes[wt]
	w.Status = statusFromToken(st)
	return r, nil
}

// queueUpsertWorker makes w the current record unless the stored one is newer.
func queueUpsertWorker(b *pgx.Batch, w *eventsv1.Worker, eff time.Time, eventID, source string, now time.Time) {
	b.Queue(`INSERT INTO workers (`+workerColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
		ON CONFLICT (worker_id) DO UPDATE SET
			worker_type = EXCLUDED.worker_type, status = EXCLUDED.status,
			given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, email = EXCLUDED.email,
			job_code = EXCLUDED.job_code, department = EXCLUDED.department, manager_id = EXCLUDED.manager_id,
			location = EXCLUDED.location, start_date = EXCLUDED.start_date, end_date = EXCLUDED.end_date,
			sponsor_id = EXCLUDED.sponsor_id, vendor_org = EXCLUDED.vendor_org,
			effective_time = EXCLUDED.effective_time, last_event_id = EXCLUDED.last_event_id,
			source = EXCLUDED.source, updated_at = EXCLUDED.updated_at
		WHERE workers.effective_time <= EXCLUDED.effective_time`,
		w.WorkerId, workerTypeToken(w.WorkerType), statusToken(w.Status), w.GivenName, w.FamilyName, w.Email,
		w.JobCode, w.Department, w.ManagerId, w.Location, w.StartDate, w.EndDate, w.SponsorId, w.VendorOrg,
		eff, eventID, source, now)
}

var historyJSON = protojson.MarshalOptions{UseProtoNames: true, UseEnumNumbers: false}

func queueHistory(b *pgx.Batch, c change, w *eventsv1.Worker, eventID, source string, eff, received time.Time, applied bool, why string) error {
	rec, err := historyJSON.Marshal(w)
	if err != nil {
		return err
	}
	b.Queue(`INSERT INTO worker_history
		(worker_id, event_id, source, hr_event_type, kind, reason, record, effective_time, received_at, applied, effect_reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		c.worker.WorkerId, eventID, source, c.hrType, c.typ.token, c.reason, rec, eff, received, applied, why)
	return nil
}

func workerTypeToken(t eventsv1.WorkerType) string {
	for name, v := range workerTypes {
		if v == t {
			return name
		}
	}
	return "unspecified"
}

func statusToken(s eventsv1.WorkerStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "WORKER_STATUS_"))
}

func statusFromToken(s string) eventsv1.WorkerStatus {
	return eventsv1.WorkerStatus(eventsv1.WorkerStatus_value["WORKER_STATUS_"+strings.ToUpper(s)])
}
