// The seed's async flow at scale (issue G, acceptance 3): USERS users (1,000), each arriving once
// within RAMP_SECS, submitting one edit and polling its job every POLL_SECS until it is final —
// as the web app does. The upstream (the emulator) runs time-scaled; the users' polling does not:
// a person's browser polls every 2 s whatever the model's speed.
//
// Run by `just loadtest-async` (crates/bench/src/bin/jewelshot-loadtest-async.rs), which starts
// the system, creates one API key per user (KEYS_FILE) and uploads the input photo (IMAGE_URL).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const BASE = __ENV.BASE_URL;
const KEYS = open(__ENV.KEYS_FILE).split('\n').filter((k) => k.length > 0);
const IMAGE_URL = __ENV.IMAGE_URL;
const USERS = KEYS.length;
const RAMP_SECS = parseFloat(__ENV.RAMP_SECS || '30');
const POLL_SECS = parseFloat(__ENV.POLL_SECS || '2');
const DEADLINE_SECS = parseFloat(__ENV.DEADLINE_SECS || '900');

const jobsCompleted = new Counter('jobs_completed');
const jobsFailed = new Counter('jobs_failed');
const jobWait = new Trend('job_wait_seconds');
const positionsSeen = new Trend('queue_position');

export const options = {
  scenarios: {
    users: { executor: 'per-vu-iterations', vus: USERS, iterations: 1, maxDuration: `${RAMP_SECS + DEADLINE_SECS}s` },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    'http_req_duration{name:poll}': ['p(95)<5'],
    'http_req_duration{name:submit}': ['p(95)<10'],
    jobs_failed: ['count==0'],
    jobs_completed: [`count==${USERS}`],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  // Arrivals spread over the ramp: user n comes at n/USERS of it.
  sleep(((__VU - 1) / USERS) * RAMP_SECS);
  const key = KEYS[__VU - 1];
  const headers = { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' };
  const body = JSON.stringify({ image_url: IMAGE_URL, prompt: `white background (user ${__VU})` });
  const submitted = http.post(`${BASE}/api/ai/edit`, body, { headers, tags: { name: 'submit' } });
  if (!check(submitted, { 'submit answered 202': (r) => r.status === 202 })) {
    jobsFailed.add(1);
    return;
  }
  const id = submitted.json('jobId');
  const started = Date.now();
  while ((Date.now() - started) / 1000 < DEADLINE_SECS) {
    sleep(POLL_SECS);
    const polled = http.get(`${BASE}/api/jobs/${id}`, { headers, tags: { name: 'poll' } });
    if (polled.status !== 200) {
      continue;
    }
    const status = polled.json('status');
    if (status === 'queued') {
      positionsSeen.add(polled.json('queuePosition'));
    } else if (status === 'complete') {
      check(polled, { 'complete job has an imageUrl': (r) => !!r.json('imageUrl') });
      jobsCompleted.add(1);
      jobWait.add((Date.now() - started) / 1000);
      return;
    } else if (status === 'failed' || status === 'canceled') {
      jobsFailed.add(1);
      return;
    }
  }
  jobsFailed.add(1);
}
