package config

import "reflect"

// Or returns q with each field left zero taken from d: a program's own
// settings over another source's, such as a Runtime's loaded queue.* keys.
// A bool is true if it is in either.
func (q Queue) Or(d Queue) Queue {
	v, dv := reflect.ValueOf(&q).Elem(), reflect.ValueOf(d)
	for i := range v.NumField() {
		if f := v.Field(i); f.IsZero() {
			f.Set(dv.Field(i))
		}
	}
	return q
}

// WithDefaults returns q with the fields left zero set to the built-in
// defaults of the queue.* keys, as work queues and the EventBus both read
// them, except the limits whose zero means none (max_age,
// dead_letter_max_age, eventbus_max_age). handler_timeout left zero is
// ack_wait, and backoff_max below backoff_initial is raised to it.
func (q Queue) WithDefaults() Queue {
	kept := q // the fields whose zero means something
	q = q.Or(Default().Queue)
	q.MaxAge, q.DeadLetterMaxAge, q.EventBusMaxAge = kept.MaxAge, kept.DeadLetterMaxAge, kept.EventBusMaxAge
	q.HandlerTimeout = kept.HandlerTimeout
	if q.HandlerTimeout <= 0 {
		q.HandlerTimeout = q.AckWait
	}
	if q.BackoffMax < q.BackoffInitial {
		q.BackoffMax = q.BackoffInitial
	}
	return q
}
