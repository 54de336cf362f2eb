package main

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// `tenurectl case` says when a case is overdue, and by how long.
func TestDeadlineNote(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	ts := timestamppb.New
	open, done := eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_OPEN, eventsv1.LeaverCaseStatus_LEAVER_CASE_STATUS_COMPLETED
	for _, tc := range []struct {
		name string
		c    *provisionerv1.LeaverCase
		want string
	}{
		{"open, past its deadline", &provisionerv1.LeaverCase{Status: open, Deadline: ts(now.Add(-3*time.Minute - 12*time.Second))}, "OVERDUE by 3m12s"},
		{"open, in time", &provisionerv1.LeaverCase{Status: open, Deadline: ts(now.Add(90 * time.Second))}, "1m30s left"},
		{"completed late", &provisionerv1.LeaverCase{Status: done, Deadline: ts(now.Add(-time.Hour)), CompletedAt: ts(now.Add(-50 * time.Minute))}, "completed 10m0s late"},
		{"completed in time", &provisionerv1.LeaverCase{Status: done, Deadline: ts(now), CompletedAt: ts(now.Add(-time.Minute))}, "met"},
	} {
		if got := deadlineNote(tc.c, now); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
