package intake

import (
	"crypto/sha256"
	"strings"
	"time"

	eventsv1 "github.com/tenure-dev/tenure/proto/tenure/events/v1"
)

// contentKey is an event's identity by content, so that HR's re-send of one change under a
// new delivery id (a "resend" button, a relay's retry that mints a new id, a vendor retry) is
// a duplicate of the first, not a second event. It hashes, per source:
//
//	source, worker id, event type, effective time, and the normalised attributes
//
// Normalised: the attributes as validated (an omitted field and an empty one are the same;
// the email is compared without case). The reason text is left out: it is commentary, and a
// re-send with other words is the same change. An event without an effective time takes
// effect when it arrives, so its key carries the day it arrived (UTC) instead: the same
// undated content on the same day is a duplicate, on a later day a new event (which the
// lifecycle rules then judge: a second leave_start of a worker on leave, a hire of a worker
// who has left, change nothing).
func contentKey(source string, c change, received time.Time) []byte {
	var b strings.Builder
	field := func(s string) {
		b.WriteString(s)
		b.WriteByte(0)
	}
	field("tenure-content-v1")
	field(source)
	field(c.worker.WorkerId)
	field(c.hrType)
	if c.effectiveTime.IsZero() {
		field("received:" + received.UTC().Format(time.DateOnly))
	} else {
		field(c.effectiveTime.UTC().Format(time.RFC3339Nano))
	}
	w := c.worker
	wt := ""
	if w.WorkerType != eventsv1.WorkerType_WORKER_TYPE_UNSPECIFIED {
		wt = workerTypeToken(w.WorkerType)
	}
	for _, v := range []string{wt, w.GivenName, w.FamilyName, strings.ToLower(w.Email), w.JobCode, w.Department,
		w.ManagerId, w.Location, w.StartDate, w.EndDate, w.SponsorId, w.VendorOrg} {
		field(v)
	}
	sum := sha256.Sum256([]byte(b.String()))
	return sum[:]
}
