package workqueue

import "context"

// DeadJob is a job of T in the queue's dead-letter stream: the value,
// decoded as the queue decodes its jobs, with the dead letter it was
// read from (why and when it was given up, the stored copy). Admin's
// DeadLetter is the same record without a type, for tools that know none.
type DeadJob[T any] struct {
	// Value is the job. It is the zero T when the job does not decode as
	// T (a job dead-lettered with reason decode, typically), and
	// DecodeError says why.
	Value       T
	DecodeError error
	DeadLetter
}

// DeadLetters returns up to n of the queue's dead letters, oldest first,
// with their jobs decoded as T (fetched from the object store when the
// copy carries a reference). Requeue takes their Seq.
func (q *Queue[T]) DeadLetters(ctx context.Context, n int) ([]DeadJob[T], error) {
	dls, err := q.admin().DeadLetters(ctx, q.cfg.Name, n)
	if err != nil {
		return nil, err
	}
	out := make([]DeadJob[T], len(dls))
	for i, dl := range dls {
		out[i].DeadLetter = dl
		body, _, err := q.payloads.Resolve(ctx, dl.Header, dl.Data)
		if err == nil {
			out[i].Value, err = q.decode(body)
		}
		out[i].DecodeError = err
	}
	return out, nil
}

// Requeue moves dead letters back into the queue as new jobs: those whose
// sequence numbers in the dead-letter stream (DeadJob.Seq) are given, or
// all of them if none are. It returns how many it moved.
func (q *Queue[T]) Requeue(ctx context.Context, seqs ...uint64) (int, error) {
	return q.admin().Requeue(ctx, q.cfg.Name, seqs...)
}

// PurgeDeadLetters deletes all of the queue's dead letters and returns how
// many there were.
func (q *Queue[T]) PurgeDeadLetters(ctx context.Context) (uint64, error) {
	return q.admin().PurgeDeadLetters(ctx, q.cfg.Name)
}

// admin is an Admin on the queue's connection.
func (q *Queue[T]) admin() *Admin { return &Admin{nc: q.nc, js: q.js} }
