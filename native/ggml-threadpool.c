/*
 * One persistent ggml CPU thread pool for node-llama-cpp's llama.cpp build.
 *
 * Why: node-llama-cpp never attaches a thread pool to its contexts, so ggml starts the threads
 * of every multi-threaded graph and joins them when the graph is done. On a 2-core machine a
 * one-row Q4_0 decode of a 0.5B model took 20.9 ms on average that way (p50 14.9, p90 36.2 ms),
 * against 14.9 ms (p50 13.8, p90 16.6 ms) on a pool kept between graphs, as llama-server keeps
 * one (common_threadpools). node-llama-cpp's addon does not expose its llama_context, so the
 * pool cannot be attached the way llama.cpp's own tools attach it.
 *
 * How: libggml-cpu calls ggml_graph_compute through its PLT, and a library loaded with
 * RTLD_GLOBAL comes first in the lookup of every library loaded after it. Loaded before
 * node-llama-cpp's backends (workers/llama-thread-pool.ts), this ggml_graph_compute hands each
 * multi-threaded graph that has no pool of its own to one kept pool, then calls the
 * ggml_graph_compute of the library that called it. Anything this file does not expect (a ggml
 * version it was not written for, a second graph while one runs) goes through unchanged.
 *
 * The graph's first thread, the one that calls ggml_graph_compute, is one kept thread of ours
 * too (the runner), as llama-server's decode loop is one thread. node-llama-cpp calls from
 * whichever of libuv's four pool threads takes its decode; with that thread changing from
 * token to token, a one-row Q4_0 decode of the 0.5B shape took 14.6 ms on average (p90 24 ms
 * in one run of five), against 13.8 ms (p90 14.2-14.8 ms) with the runner, and 13.7 ms with
 * libuv held to one thread, measured in turn five times each.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <node_api.h>
#include <pthread.h>
#include <signal.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The ggml whose struct ggml_cplan this file reads (node-llama-cpp 3.21.1's). */
#define WRITTEN_FOR_GGML "0.23.0"

struct ggml_cgraph;
struct ggml_threadpool;

/* The leading fields of ggml-cpu.h's struct ggml_cplan: all this file touches. */
struct cplan_head {
  size_t work_size;
  uint8_t *work_data;
  int n_threads;
  struct ggml_threadpool *threadpool;
};

/* Room for struct ggml_threadpool_params (a 512-entry CPU mask and a few fields), with plenty to spare. */
typedef struct {
  alignas(max_align_t) unsigned char bytes[4096];
} threadpool_params;

typedef int (*graph_compute_fn)(struct ggml_cgraph *, struct cplan_head *);
typedef struct ggml_threadpool *(*threadpool_new_fn)(threadpool_params *);
typedef void (*threadpool_free_fn)(struct ggml_threadpool *);
typedef void (*threadpool_params_init_fn)(threadpool_params *, int);
typedef const char *(*ggml_version_fn)(void);

struct cpu_library {
  void *base; /* where the library is mapped, as dladdr names it */
  graph_compute_fn compute;
  threadpool_new_fn threadpool_new;
  threadpool_free_fn threadpool_free;
  threadpool_params_init_fn params_init;
  const char *version;
};

int ggml_graph_compute(struct ggml_cgraph *graph, struct cplan_head *plan);

/* The first CPU library that calls in, found once; another (never seen so far) is looked up on each call. */
static pthread_mutex_t lookup_lock = PTHREAD_MUTEX_INITIALIZER;
static struct cpu_library first_library;

/* The pool and what made it; only touched while a compute holds pool_lock (its caller holds it while the runner computes). */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ggml_threadpool *pool;
static int pool_threads;
static uint64_t pooled_graphs;
/* The distinct threads that started pooled graphs, up to MAX_STARTERS: one, the runner, unless it could not start. */
#define MAX_STARTERS 8
static pthread_t starters[MAX_STARTERS];
static int starter_count;
/* Written once, before problem_set is; read without pool_lock, so that status() never waits on a compute. */
static char problem[200];
static bool problem_set;

static bool look_up(const char *path, void *base, struct cpu_library *library) {
  void *handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (handle == NULL) return false;
  /* Looked up in the calling library and what it links: the definitions it would have used. */
  library->base = base;
  library->compute = (graph_compute_fn)dlsym(handle, "ggml_graph_compute");
  library->threadpool_new = (threadpool_new_fn)dlsym(handle, "ggml_threadpool_new");
  library->threadpool_free = (threadpool_free_fn)dlsym(handle, "ggml_threadpool_free");
  library->params_init = (threadpool_params_init_fn)dlsym(handle, "ggml_threadpool_params_init");
  ggml_version_fn version = (ggml_version_fn)dlsym(handle, "ggml_version");
  library->version = version ? version() : "unknown";
  dlclose(handle);
  return library->compute != NULL && library->compute != (graph_compute_fn)ggml_graph_compute;
}

static bool find_cpu_library(const void *caller, struct cpu_library *library) {
  Dl_info info;
  if (!dladdr(caller, &info) || info.dli_fname == NULL) return false;
  pthread_mutex_lock(&lookup_lock);
  bool found = true;
  if (first_library.base == NULL) found = look_up(info.dli_fname, info.dli_fbase, &first_library);
  if (found && first_library.base == info.dli_fbase) *library = first_library;
  else found = look_up(info.dli_fname, info.dli_fbase, library);
  pthread_mutex_unlock(&lookup_lock);
  return found;
}

static void give_up(const char *why) {
  snprintf(problem, sizeof problem, "%s", why);
  __atomic_store_n(&problem_set, true, __ATOMIC_RELEASE);
}

static void note_starter(pthread_t thread) {
  int known = __atomic_load_n(&starter_count, __ATOMIC_RELAXED);
  for (int i = 0; i < known; i++) {
    if (pthread_equal(starters[i], thread)) return;
  }
  if (known < MAX_STARTERS) {
    starters[known] = thread;
    __atomic_store_n(&starter_count, known + 1, __ATOMIC_RELAXED);
  }
}

static int compute_on_pool(struct ggml_cgraph *graph, struct cplan_head *plan, const struct cpu_library *library) {
  if (pool == NULL && !__atomic_load_n(&problem_set, __ATOMIC_ACQUIRE)) {
    char why[sizeof problem];
    if (library->threadpool_new == NULL || library->threadpool_free == NULL || library->params_init == NULL) {
      give_up("the ggml CPU library has no thread pool functions");
    } else if (strcmp(library->version, WRITTEN_FOR_GGML) != 0) {
      snprintf(why, sizeof why, "ggml %s is not the %s this pool was written for", library->version, WRITTEN_FOR_GGML);
      give_up(why);
    }
  }
  if (__atomic_load_n(&problem_set, __ATOMIC_ACQUIRE) || library->base != first_library.base) return library->compute(graph, plan);
  if (pool != NULL && pool_threads < plan->n_threads) {
    library->threadpool_free(pool);
    pool = NULL;
  }
  if (pool == NULL) {
    threadpool_params params;
    memset(&params, 0, sizeof params);
    library->params_init(&params, plan->n_threads);
    pool = library->threadpool_new(&params);
    if (pool == NULL) {
      give_up("ggml could not start a thread pool");
      return library->compute(graph, plan);
    }
    __atomic_store_n(&pool_threads, plan->n_threads, __ATOMIC_RELAXED);
  }
  plan->threadpool = pool;
  int status = library->compute(graph, plan);
  plan->threadpool = NULL;
  __atomic_add_fetch(&pooled_graphs, 1, __ATOMIC_RELAXED);
  note_starter(pthread_self());
  return status;
}

/* A graph handed to the runner; the caller waits on it until `done`. */
struct runner_job {
  struct ggml_cgraph *graph;
  struct cplan_head *plan;
  const struct cpu_library *library;
  int status;
  bool done;
};

/* The runner and its one job at a time (a compute holds pool_lock throughout). */
static pthread_mutex_t runner_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_posted = PTHREAD_COND_INITIALIZER;
static pthread_cond_t job_done = PTHREAD_COND_INITIALIZER;
static struct runner_job *posted_job;
static bool runner_started;

static void *run_jobs(void *unused) {
  (void)unused;
  pthread_mutex_lock(&runner_lock);
  for (;;) {
    while (posted_job == NULL) pthread_cond_wait(&job_posted, &runner_lock);
    struct runner_job *job = posted_job;
    pthread_mutex_unlock(&runner_lock);
    job->status = compute_on_pool(job->graph, job->plan, job->library);
    pthread_mutex_lock(&runner_lock);
    job->done = true;
    posted_job = NULL;
    pthread_cond_signal(&job_done);
  }
  return NULL;
}

static bool start_runner(void) {
  sigset_t all, before;
  sigfillset(&all);
  /* The runner inherits this mask: signals stay with the threads Node expects them on. */
  pthread_sigmask(SIG_SETMASK, &all, &before);
  pthread_t runner;
  bool started = pthread_create(&runner, NULL, run_jobs, NULL) == 0;
  pthread_sigmask(SIG_SETMASK, &before, NULL);
  if (started) pthread_detach(runner);
  return started;
}

static int compute_on_runner(struct ggml_cgraph *graph, struct cplan_head *plan, const struct cpu_library *library) {
  struct runner_job job = { graph, plan, library, 0, false };
  pthread_mutex_lock(&runner_lock);
  if (!runner_started && !(runner_started = start_runner())) {
    pthread_mutex_unlock(&runner_lock);
    give_up("could not start the thread that starts pooled graphs");
    return library->compute(graph, plan);
  }
  posted_job = &job;
  pthread_cond_signal(&job_posted);
  while (!job.done) pthread_cond_wait(&job_done, &runner_lock);
  pthread_mutex_unlock(&runner_lock);
  return job.status;
}

int ggml_graph_compute(struct ggml_cgraph *graph, struct cplan_head *plan) {
  struct cpu_library library;
  if (!find_cpu_library(__builtin_return_address(0), &library)) {
    fprintf(stderr, "ggml-threadpool: cannot find the ggml_graph_compute its caller links\n");
    abort();
  }
  if (plan->threadpool != NULL || plan->n_threads < 2 || __atomic_load_n(&problem_set, __ATOMIC_ACQUIRE) || pthread_mutex_trylock(&pool_lock) != 0) {
    return library.compute(graph, plan);
  }
  int status = compute_on_runner(graph, plan, &library);
  pthread_mutex_unlock(&pool_lock);
  return status;
}

static napi_value set(napi_env env, napi_value object, const char *name, napi_value value) {
  napi_set_named_property(env, object, name, value);
  return object;
}

/*
 * { pooledGraphs, threads, startingThreads, problem }: graphs computed on the pool, its size (0
 * before the first), the distinct threads that started them (up to 8), why it is not used (or null).
 */
static napi_value status(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, graphs, threads, starting, why;
  napi_create_object(env, &result);
  napi_create_double(env, (double)__atomic_load_n(&pooled_graphs, __ATOMIC_RELAXED), &graphs);
  napi_create_int32(env, __atomic_load_n(&pool_threads, __ATOMIC_RELAXED), &threads);
  napi_create_int32(env, __atomic_load_n(&starter_count, __ATOMIC_RELAXED), &starting);
  if (__atomic_load_n(&problem_set, __ATOMIC_ACQUIRE)) napi_create_string_utf8(env, problem, NAPI_AUTO_LENGTH, &why);
  else napi_get_null(env, &why);
  set(env, result, "pooledGraphs", graphs);
  set(env, result, "threads", threads);
  set(env, result, "startingThreads", starting);
  return set(env, result, "problem", why);
}

NAPI_MODULE_INIT() {
  napi_value function;
  napi_create_function(env, "status", NAPI_AUTO_LENGTH, status, NULL, &function);
  return set(env, exports, "status", function);
}
