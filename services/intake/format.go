package intake

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Delivery is one webhook delivery whose Standard Webhooks signature has been verified.
type Delivery struct {
	// Source is the configured source name.
	Source string
	// WebhookID is the webhook-id header: the sender's id of the event, the same on retries.
	WebhookID string
	// Timestamp is the webhook-timestamp of this attempt.
	Timestamp time.Time
	// Received is when the intake received it.
	Received time.Time
	// Body holds the raw bytes the signature covered.
	Body []byte
	// ContentType is the body's media type: application/json, or
	// application/x-www-form-urlencoded for a FormAdapter's sources.
	ContentType string
}

// An Adapter turns the body of one delivery in its source's format into a canonical HREvent.
// The intake then validates the HREvent, applies it to the worker registry and publishes it,
// whatever the format, so an adapter only translates. Thin formats (HRIS webhooks that carry
// ids and changed field names) fetch the record from the HRIS API in Decode.
//
// Decode returns an *InputError for input the sender must fix (400 for a body that cannot be
// decoded, 422 for one that decodes but makes no sense); any other error answers 503 so the
// sender retries (for example an HRIS API that is down).
type Adapter interface {
	Decode(ctx context.Context, d Delivery) (HREvent, error)
}

// FieldNamer is an Adapter whose format names fields differently from the canonical event. A
// validation error then names the vendor's field (the one to fix in the HRIS or in its
// integration), with the canonical path in the message: VendorField returns it for a
// canonical path such as "worker.manager_id", or "" when there is none.
type FieldNamer interface {
	VendorField(canonical string) string
}

// vendorFieldError rewrites a validation error of an event a FieldNamer decoded.
func vendorFieldError(a Adapter, err error) error {
	fn, ok := a.(FieldNamer)
	var ie *InputError
	if !ok || !errors.As(err, &ie) || ie.Field == "" {
		return err
	}
	name := fn.VendorField(ie.Field)
	if name == "" {
		return err
	}
	out := *ie
	out.Field = name
	if strings.Contains(ie.Message, ie.Field) {
		out.Message = strings.Replace(ie.Message, ie.Field, name, 1) + " (tenure's " + ie.Field + ")"
	} else {
		out.Message = name + " (tenure's " + ie.Field + "): " + ie.Message
	}
	return &out
}

// BatchAdapter is an Adapter whose deliveries may carry several workers' events (BambooHR's
// field-based webhooks). Each event is stored and published on its own, under the delivery id
// plus "/" plus the worker id; the delivery answers 2xx once all of them are.
type BatchAdapter interface {
	Adapter
	DecodeBatch(ctx context.Context, d Delivery) ([]HREvent, error)
}

// RecordFetcher is an Adapter of a thin format: it fetches the worker's record from the
// HRIS API while decoding, so the webhook answers a re-delivered webhook-id before decoding.
type RecordFetcher interface {
	FetchesRecords()
}

// RequestVerifier is an Adapter whose HRIS signs deliveries its own way instead of with
// Standard Webhooks. VerifyRequest authenticates the raw body and headers with the source's
// secrets (taken as is, not as "whsec_" secrets) and returns an id for the delivery that stays
// the same when the HRIS retries it (the replay guard) and the time it was signed. Errors are
// *InputError with status 401 naming the header.
type RequestVerifier interface {
	VerifyRequest(h http.Header, body []byte) (id string, ts time.Time, err error)
}

// AdapterFactory builds the adapter of one configured source. It checks the source's
// format-specific settings (such as API) and has no side effects.
type AdapterFactory func(source string, cfg SourceConfig) (Adapter, error)

// Built-in formats.
const (
	// FormatCanonical is tenure's own JSON format (see HREvent).
	FormatCanonical = "canonical"
	// FormatBambooHR: BambooHR event-based (thin) and field-based webhooks, X-BambooHR-Signature.
	FormatBambooHR = "bamboohr"
	// FormatHiBob: HiBob webhooks v2 (thin), Bob-Signature.
	FormatHiBob = "hibob"
	// FormatWorkday: a Workday-style outbound worker change, Standard Webhooks signature.
	FormatWorkday = "workday"
)

type formatInfo struct {
	factory AdapterFactory
	// ownSignature: the adapter is a RequestVerifier and the secrets are the vendor's.
	ownSignature bool
}

var (
	formatsMu sync.RWMutex
	// The registry: a new HRIS is one file with its adapter plus one line here.
	formats = map[string]formatInfo{
		FormatCanonical: {factory: func(string, SourceConfig) (Adapter, error) { return canonicalAdapter{}, nil }},
		FormatBambooHR:  {factory: newBambooHRAdapter, ownSignature: true},
		FormatHiBob:     {factory: newHiBobAdapter, ownSignature: true},
		FormatWorkday:   {factory: func(string, SourceConfig) (Adapter, error) { return workdayAdapter{}, nil }},
	}
)

// RegisterFormat makes a source format available under name (SourceConfig.Format). It panics
// on an empty name, a nil factory or a name registered twice: those are programming errors.
func RegisterFormat(name string, f AdapterFactory) {
	if name == "" || strings.TrimSpace(name) != name {
		panic(fmt.Sprintf("intake: RegisterFormat with a bad name %q", name))
	}
	if f == nil {
		panic(fmt.Sprintf("intake: RegisterFormat %q with a nil factory", name))
	}
	formatsMu.Lock()
	defer formatsMu.Unlock()
	if _, dup := formats[name]; dup {
		panic(fmt.Sprintf("intake: format %q registered twice", name))
	}
	formats[name] = formatInfo{factory: f}
}

// Formats returns the registered format names, sorted.
func Formats() []string {
	formatsMu.RLock()
	defer formatsMu.RUnlock()
	names := make([]string, 0, len(formats))
	for n := range formats {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func lookupFormat(name string) (formatInfo, bool) {
	formatsMu.RLock()
	defer formatsMu.RUnlock()
	f, ok := formats[name]
	return f, ok
}

// InputError is a problem with a delivery that the sender must fix. It becomes the HTTP
// answer {"error": Message, "field": Field} with Status.
type InputError struct {
	Status  int
	Field   string
	Message string
}

func (e *InputError) Error() string {
	if e.Field != "" && !strings.Contains(e.Message, e.Field) {
		return e.Field + ": " + e.Message
	}
	return e.Message
}

// BadRequest is an InputError for a body that cannot be decoded (400).
func BadRequest(field, format string, args ...any) *InputError {
	return &InputError{Status: http.StatusBadRequest, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Unprocessable is an InputError for a decoded body that is not a valid HR event (422).
func Unprocessable(field, format string, args ...any) *InputError {
	return &InputError{Status: http.StatusUnprocessableEntity, Field: field, Message: fmt.Sprintf(format, args...)}
}
