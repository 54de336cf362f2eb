package provisioner

import (
	"context"
	"strings"
	"testing"

	"github.com/tenure-dev/tenure/pkg/natsx"
	provisionerv1 "github.com/tenure-dev/tenure/proto/tenure/provisioner/v1"
)

// A queue whose consumer cannot be read is marked, not turned into an error for the whole
// answer: the operator still sees every other queue.
func TestListQueuesMarksAnUnreadableQueue(t *testing.T) {
	ctx := context.Background()
	e := start(t)
	if err := e.svc.js.DeleteConsumer(ctx, natsx.EventsStream, workDurable("demo")); err != nil {
		t.Fatal(err)
	}
	res, err := e.svc.ListQueues(ctx, &provisionerv1.ListQueuesRequest{})
	if err != nil {
		t.Fatalf("ListQueues with one unreadable queue: %v", err)
	}
	if len(res.Queues) != 1 || res.Queues[0].Connector != "demo" || !strings.Contains(res.Queues[0].Error, "consumer not found") {
		t.Fatalf("queues %v: want demo marked unreadable", res.Queues)
	}
}
