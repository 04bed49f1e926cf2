// The seed's 50-concurrent-users scenario: each virtual user submits an edit and polls its job
// every 2 s until it is complete, while the number of users ramps to 10, to 50, and down.
// Every duration is multiplied by TIME_SCALE (the emulator runs at the same scale).
//
// Run by `just loadtest` (crates/bench/src/bin/jewelshot-loadtest.rs), which starts the system,
// creates one API key per virtual user (KEYS_FILE) and uploads the input photo (IMAGE_URL).
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const BASE = __ENV.BASE_URL;
const KEYS = open(__ENV.KEYS_FILE).split('\n').filter((k) => k.length > 0);
const IMAGE_URL = __ENV.IMAGE_URL;
const SCALE = parseFloat(__ENV.TIME_SCALE || '1');
const scaled = (secs) => `${Math.max(1, Math.round(secs * SCALE))}s`;
// A job that is not final after this long counts as lost.
const JOB_DEADLINE_SECS = 1800 * SCALE;

const jobsCompleted = new Counter('jobs_completed');
const jobsFailed = new Counter('jobs_failed');
const jobWait = new Trend('job_wait_seconds');

export const options = {
  scenarios: {
    seed: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: scaled(120), target: 10 },
        { duration: scaled(300), target: 50 },
        { duration: scaled(120), target: 0 },
      ],
      // Users leaving during the ramp-down still wait for the job they submitted.
      gracefulRampDown: scaled(1800),
      gracefulStop: scaled(1800),
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    http_req_duration: ['p(95)<50'],
    jobs_failed: ['count==0'],
    jobs_completed: ['count>0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const key = KEYS[(__VU - 1) % KEYS.length];
  const headers = { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' };
  const body = JSON.stringify({ image_url: IMAGE_URL, prompt: `enhance lighting (vu ${__VU}, iteration ${__ITER})` });
  const submitted = http.post(`${BASE}/api/ai/edit`, body, { headers, tags: { name: 'submit' } });
  if (!check(submitted, { 'submit answered 202': (r) => r.status === 202 })) {
    jobsFailed.add(1);
    sleep(2 * SCALE);
    return;
  }
  const id = submitted.json('jobId');
  const started = Date.now();
  while ((Date.now() - started) / 1000 < JOB_DEADLINE_SECS) {
    sleep(2 * SCALE);
    const polled = http.get(`${BASE}/api/jobs/${id}`, { headers, tags: { name: 'poll' } });
    if (polled.status !== 200) {
      continue;
    }
    const status = polled.json('status');
    if (status === 'complete') {
      check(polled, { 'complete job has an imageUrl': (r) => !!r.json('imageUrl') });
      jobsCompleted.add(1);
      jobWait.add((Date.now() - started) / 1000);
      return;
    }
    if (status === 'failed' || status === 'canceled') {
      jobsFailed.add(1);
      return;
    }
  }
  jobsFailed.add(1);
}
