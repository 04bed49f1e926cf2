// The soak (issue H, acceptance 7): the seed's load held for DURATION_SECS — VUS users (50), each
// submitting an edit, polling its job every POLL_SECS (2 s, real time, as a browser does) until it
// is final, pausing THINK_SECS and submitting again. The upstream (the emulator) runs time-scaled
// with faults injected; jobs may fail (that is final too) but none may be lost, and no request may
// fail.
//
// Run by `just soak MINUTES` (crates/bench/src/bin/jewelshot-soak.rs), which starts the system,
// samples every process each minute and prints the slopes.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const BASE = __ENV.BASE_URL;
const KEYS = open(__ENV.KEYS_FILE).split('\n').filter((k) => k.length > 0);
const IMAGE_URL = __ENV.IMAGE_URL;
const VUS = parseInt(__ENV.VUS || '50', 10);
const DURATION_SECS = parseInt(__ENV.DURATION_SECS || '3600', 10);
const POLL_SECS = parseFloat(__ENV.POLL_SECS || '2');
const THINK_SECS = parseFloat(__ENV.THINK_SECS || '1');
// A job not final this long after its submit is lost.
const DEADLINE_SECS = parseFloat(__ENV.DEADLINE_SECS || '300');

const jobsCompleted = new Counter('jobs_completed');
const jobsFailed = new Counter('jobs_failed');
const jobsLost = new Counter('jobs_lost');
const jobWait = new Trend('job_wait_seconds');

export const options = {
  scenarios: {
    users: {
      executor: 'constant-vus',
      vus: VUS,
      duration: `${DURATION_SECS}s`,
      // A user whose time is up still waits for the job it submitted.
      gracefulStop: `${DEADLINE_SECS}s`,
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    jobs_lost: ['count==0'],
    jobs_completed: ['count>0'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const key = KEYS[(__VU - 1) % KEYS.length];
  const headers = { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' };
  const body = JSON.stringify({ image_url: IMAGE_URL, prompt: `enhance lighting (vu ${__VU}, iteration ${__ITER})` });
  const submitted = http.post(`${BASE}/api/ai/edit`, body, { headers, tags: { name: 'submit' } });
  if (!check(submitted, { 'submit answered 202': (r) => r.status === 202 })) {
    sleep(THINK_SECS);
    return;
  }
  const id = submitted.json('jobId');
  const started = Date.now();
  for (;;) {
    sleep(POLL_SECS);
    const polled = http.get(`${BASE}/api/jobs/${id}`, { headers, tags: { name: 'poll' } });
    const status = polled.status === 200 ? polled.json('status') : null;
    if (status === 'complete') {
      jobsCompleted.add(1);
      jobWait.add((Date.now() - started) / 1000);
      break;
    }
    if (status === 'failed' || status === 'canceled') {
      jobsFailed.add(1);
      break;
    }
    if ((Date.now() - started) / 1000 > DEADLINE_SECS) {
      jobsLost.add(1);
      break;
    }
  }
  sleep(THINK_SECS);
}
