package intake

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The JSON Schema in docs/ must describe exactly what validate accepts: the same event types,
// worker types and fields, and its examples must be valid events.
func TestSchemaMatchesCanonicalEvent(t *testing.T) {
	b, err := os.ReadFile("../../docs/hr-event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Properties map[string]struct {
			Enum []string `json:"enum"`
		} `json:"properties"`
		Defs struct {
			Worker struct {
				Properties map[string]struct {
					Enum []string `json:"enum"`
				} `json:"properties"`
			} `json:"worker"`
		} `json:"$defs"`
		Examples []json.RawMessage `json:"examples"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if got := s.Properties["type"].Enum; !slices.Equal(got, typeNames) {
		t.Errorf("schema types %v, code %v", got, typeNames)
	}
	if got := s.Defs.Worker.Properties["worker_type"].Enum; !slices.Equal(got, workerTypeNames) {
		t.Errorf("schema worker types %v, code %v", got, workerTypeNames)
	}
	var fields []string
	rt := reflect.TypeOf(HRWorker{})
	for i := 0; i < rt.NumField(); i++ {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		fields = append(fields, name)
		if _, ok := s.Defs.Worker.Properties[name]; !ok {
			t.Errorf("schema lacks worker.%s", name)
		}
	}
	if len(s.Defs.Worker.Properties) != len(fields) {
		t.Errorf("schema worker has %d properties, code %d", len(s.Defs.Worker.Properties), len(fields))
	}
	for i, ex := range s.Examples {
		var ev HREvent
		if err := DecodeStrictJSON(ex, &ev); err != nil {
			t.Fatalf("example %d: %v", i, err)
		}
		if _, err := validate(ev); err != nil {
			t.Fatalf("example %d: %v", i, err)
		}
	}
}
