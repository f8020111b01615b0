#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <ctime>
#include <filesystem>
#include <iostream>
#include <memory>

#include "commands.h"
#include "moelab/config/config.h"
#include "moelab/analysis/study.h"
#include "moelab/dist/launcher.h"
#include "moelab/dist/process_group.h"
#include "moelab/run/run.h"
#include "moelab/run/run_config.h"
#include "moelab/train/trainer.h"

namespace moelab::app {

namespace {

std::string default_run_dir() {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", std::localtime(&now));
  return std::string("runs/run-") + stamp;
}

// This process's place among the processes of a run: none (nullptr) when it runs alone; else
// it joins the others (launched by `--nproc`, torchrun or Slurm: dist/process_group.h).
std::shared_ptr<dist::ProcessGroupCollective> join_processes(int nproc, double timeout_seconds) {
  const dist::LaunchEnvironment env = dist::launch_environment();
  if (nproc > 1 && env.world_size > 1 && nproc != env.world_size) {
    throw ConfigError("--nproc " + std::to_string(nproc) + ": this process was started by a " +
                      "launcher with WORLD_SIZE=" + std::to_string(env.world_size) + "; use one or the other");
  }
  if (env.world_size <= 1) return nullptr;
  return std::make_shared<dist::ProcessGroupCollective>(env, timeout_seconds);
}

// Runs `work` on this rank; a failure leaves its message where the other ranks quote it.
void as_rank(const std::shared_ptr<dist::ProcessGroupCollective>& processes,
             const std::function<void()>& work) {
  try {
    work();
  } catch (const std::exception& e) {
    if (processes) {
      const std::string what = e.what();
      processes->report_failure(what.substr(0, what.find('\n')));
    }
    throw;
  }
}

// `moelab train/resume --nproc N` in the launching process: the same command line in N local
// processes with the run directory fixed (a default one is named after the clock).
bool launch_if_asked(int nproc, const std::string& run_dir, bool add_run_dir) {
  if (nproc <= 1 || dist::launch_environment().world_size > 1) return false;
  std::vector<std::string> argv = command_line();
  argv[0] = std::filesystem::read_symlink("/proc/self/exe").string();
  if (add_run_dir) {
    argv.push_back("--run-dir");
    argv.push_back(run_dir);
  }
  dist::LocalLaunch launch;
  launch.nproc = nproc;
  const int status = dist::launch_local(argv, launch);
  if (status != 0) throw ExitStatus{status};
  return true;
}

// A federated run's rounds; rank 0 (or the only process) reports.
void run_federated(std::unique_ptr<train::FederatedTrainer> federated, const std::string& run_dir,
                   const std::shared_ptr<dist::ProcessGroupCollective>& processes) {
  const bool reports = !processes || processes->rank() == 0;
  if (reports) federated->set_console(std::cout);
  federated->run();
  if (reports) std::cout << "run directory: " << run_dir << "\n";
}

// Trains with progress on the console and SIGINT/SIGTERM turned into a clean stop.
void train_and_report(train::Trainer& trainer, const std::string& run_dir, bool quiet = false) {
  train::install_stop_signal_handlers();
  if (quiet) return void(trainer.run());  // a data-parallel rank other than 0
  trainer.set_console(train::console_mode_for_stdout(), std::cout);
  // Parameter groups and frozen parameters are worth a look before a long run.
  const train::OptimizerSetup& optimizer = trainer.optimizer();
  if (optimizer.groups.size() > 1 || !optimizer.frozen.empty()) std::cout << optimizer.describe();
  const train::TrainSummary s = trainer.run();
  const std::string validation =
      s.evaluated ? train::format_metrics(trainer.task(), s.val, "val ") : "not evaluated";
  std::cout << fmt::format("step {}: train loss {:.4f}, {}, skipped steps {}\n", s.steps,
                           s.final_train_loss, validation, s.skipped_steps);
  if (s.best_step >= 0) std::cout << fmt::format("best: step {} ({:.4f})\n", s.best_step, s.best_value);
  switch (s.stop_reason) {
    case train::StopReason::kCompleted:
      break;
    case train::StopReason::kEarlyStopping:
      std::cout << fmt::format("stopped early at step {}: no improvement of the monitored metric "
                               "in train.monitor.patience evaluations\n", s.steps);
      break;
    case train::StopReason::kTimeLimit:
      std::cout << fmt::format("stopped at step {}/{}: train.max_time reached. To go on: moelab "
                               "resume {} train.max_time=<longer>\n",
                               s.steps, s.total_steps, run_dir);
      break;
    case train::StopReason::kSignal:
      std::cout << fmt::format("interrupted at step {}/{}; state saved in {}. To go on: moelab "
                               "resume {}\n", s.steps, s.total_steps, s.checkpoint, run_dir);
      break;
  }
  std::cout << "run directory: " << run_dir << "\n";
}

}  // namespace

void register_run_commands(CLI::App& app, Action& action) {
  struct TrainArguments : ConfigArguments {
    std::string run_dir;
    int nproc = 1;
  };
  const std::string nproc_help =
      "Processes on this machine training the run together (data parallel); a launcher's "
      "RANK/WORLD_SIZE (torchrun, Slurm) does the same across machines";
  auto args = std::make_shared<TrainArguments>();
  CLI::App* train = app.add_subcommand("train", "Train a model described by config files");
  add_config_arguments(*train, *args);
  train->add_option("--run-dir", args->run_dir, "Run directory (default runs/run-<time>)");
  train->add_option("--nproc", args->nproc, nproc_help)->check(kPositive);
  train->callback([args, &action] {
    action = [args] {
      const std::optional<YAML::Node> resolved = resolve_or_dump(*args);
      if (!resolved) return;
      const std::string run_dir = args->run_dir.empty() ? default_run_dir() : args->run_dir;
      if (launch_if_asked(args->nproc, run_dir, args->run_dir.empty())) return;
      const double timeout = train::parse_duration(run::parallel_options(*resolved).timeout(), "parallel.timeout");
      const auto processes = join_processes(args->nproc, timeout);
      if (run::federated_options(*resolved).clients() > 0) {
        as_rank(processes, [&] {
          run_federated(run::start_federated_run(*resolved, run_dir, processes), run_dir, processes);
        });
        return;
      }
      as_rank(processes, [&] {
        std::unique_ptr<train::Trainer> trainer;
        try {
          trainer = run::start_run(*resolved, run_dir, processes);
        } catch (const ConfigError& e) {  // a size that does not fit names the file that set it
          throw config::with_origin(e, args->files, args->overrides);
        }
        train_and_report(*trainer, run_dir, processes && processes->rank() != 0);
      });
    };
  });

  struct ResumeArguments {
    std::string run_dir;
    std::vector<std::string> overrides;
    int nproc = 1;
  };
  auto resume_args = std::make_shared<ResumeArguments>();
  CLI::App* resume = app.add_subcommand("resume", "Continue a run from its newest checkpoint");
  resume->add_option("run_dir", resume_args->run_dir, "The run directory")->required();
  resume->add_option("overrides", resume_args->overrides,
                     "Limits to change, e.g. train.max_steps=400 train.max_time=2h");
  resume
      ->add_option("--nproc", resume_args->nproc,
                   nproc_help + "; any number, whatever number of processes wrote the checkpoint")
      ->check(kPositive);
  resume->callback([resume_args, &action] {
    action = [resume_args] {
      if (launch_if_asked(resume_args->nproc, resume_args->run_dir, false)) return;
      double timeout = 60;
      const std::filesystem::path saved = std::filesystem::path(resume_args->run_dir) / train::kRunConfigFile;
      if (std::filesystem::exists(saved)) {
        YAML::Node config = config::load_file(saved.string());
        for (const auto& assignment : resume_args->overrides) config::apply_override(config, assignment);
        timeout = train::parse_duration(run::parallel_options(config).timeout(), "parallel.timeout");
      }
      const auto processes = join_processes(resume_args->nproc, timeout);
      if (run::is_federated_run(resume_args->run_dir)) {
        if (!resume_args->overrides.empty()) {
          throw ConfigError(resume_args->overrides[0] + ": a federated run resumes as it was started");
        }
        as_rank(processes, [&] {
          run_federated(run::resume_federated_run(resume_args->run_dir, processes), resume_args->run_dir, processes);
        });
        return;
      }
      as_rank(processes, [&] {
        auto trainer = run::resume_run(resume_args->run_dir, resume_args->overrides, processes);
        train_and_report(*trainer, resume_args->run_dir, processes && processes->rank() != 0);
      });
    };
  });

  struct EvalArguments : ConfigArguments {
    std::string path;
    bool latest = false, json = false;
  };
  auto eval_args = std::make_shared<EvalArguments>();
  CLI::App* eval = app.add_subcommand(
      "eval", "Evaluate a checkpoint on the test split (the validation split if there is none)");
  eval->add_option("path", eval_args->path, "A run directory (its best checkpoint) or a checkpoint")
      ->required();
  add_config_arguments(*eval, *eval_args);
  eval->add_flag("--latest", eval_args->latest, "Use the run's newest checkpoint, not its best");
  eval->add_flag("--json", eval_args->json, "One JSON object instead of text");
  eval->footer("Config files and overrides stack on the checkpoint's config, e.g. another data "
               "set: -c other-data.yaml.");
  eval->callback([eval_args, &action] {
    action = [eval_args] {
      const auto e = run::evaluate_checkpoint(eval_args->path, eval_args->files,
                                              eval_args->overrides, eval_args->latest);
      const train::Metrics& metrics = e.result.metrics;
      if (eval_args->json) {
        nlohmann::json line{{"checkpoint", e.checkpoint}, {"step", e.step}, {"split", e.split},
                            {"task", e.task->name()}, {"samples", metrics.samples}};
        for (const auto& [name, value] : metrics.values) line[name] = value;
        for (const auto& [name, value] : metrics.details.items()) line[name] = value;
        std::cout << line.dump() << "\n";
        return;
      }
      std::cout << fmt::format("{} (step {}), {} split: {} over {} samples\n", e.checkpoint,
                               e.step, e.split, train::format_metrics(*e.task, metrics, ""),
                               metrics.samples);
    };
  });

  struct StudyArguments {
    std::vector<std::string> files, overrides;
    std::string run_dir;
    bool dump_plan = false;
  };
  auto study_args = std::make_shared<StudyArguments>();
  CLI::App* study = app.add_subcommand(
      "study", "Train the runs of a comparative study, then write its HTML report");
  study->add_option("-c,--config", study_args->files, "Study file; repeat to stack them")
      ->required()
      ->allow_extra_args(false);
  study->add_option("overrides", study_args->overrides, "key.sub=value overrides of the study file");
  study->add_option("--run-dir", study_args->run_dir, "Study directory (default runs/<study name>)");
  study->add_flag("--dump-plan", study_args->dump_plan, "Print every run's resolved config and exit");
  study->callback([study_args, &action] {
    action = [study_args] {
      const analysis::StudyPlan plan = analysis::plan_study(study_args->files, study_args->overrides);
      if (study_args->dump_plan) {
        for (const auto& [name, config] : plan.runs) std::cout << "# " << name << "\n" << config << "\n---\n";
        return;
      }
      const std::string dir = study_args->run_dir.empty() ? "runs/" + plan.name : study_args->run_dir;
      train::install_stop_signal_handlers();
      const nlohmann::json result =
          analysis::run_study(plan, dir, train::console_mode_for_stdout(), std::cout);
      for (const auto& run : result["runs"]) {
        if (run.contains("language_model")) {
          const auto& lm = run["language_model"];
          std::cout << fmt::format("{:<20} test perplexity per word {:.1f}  params {:>11}  FLOPs/token {:>11}  {:.0f} tokens/s\n",
                                   run["name"].get<std::string>(), lm["test_word_perplexity"].get<double>(),
                                   run["parameters_total"].get<int64_t>(), run["flops_per_sample"].get<int64_t>(),
                                   lm["train_tokens_per_s"].get<double>());
          continue;
        }
        if (run.contains("perturbation")) {
          const auto& test = run["perturbation"]["test"];
          std::cout << fmt::format("{:<20} test R^2 top-20 DE {:.4f}  Pearson DE {:.4f}  params {:>9}  FLOPs/sample {:>11}\n",
                                   run["name"].get<std::string>(), test["r2_top20"].get<double>(),
                                   test["pearson_de"].get<double>(), run["parameters_total"].get<int64_t>(),
                                   run["flops_per_sample"].get<int64_t>());
          continue;
        }
        std::cout << fmt::format("{:<20} test accuracy {:.2f}%  params {:>9}  FLOPs/image {:>11}\n",
                                 run["name"].get<std::string>(), 100.0 * run["test_accuracy"].get<double>(),
                                 run["parameters_total"].get<int64_t>(), run["flops_per_sample"].get<int64_t>());
      }
      if (result.contains("baselines") && !result["baselines"].is_null()) {
        for (const auto& [name, baseline] : result["baselines"].items()) {
          const auto& values = baseline["values"];
          const bool scored = baseline["details"]["skipped"]["r2_top20"].get<double>() <
                              baseline["samples"].get<double>();
          std::cout << fmt::format("{:<20} test R^2 top-20 DE {}  (baseline)\n", name,
                                   scored ? fmt::format("{:.4f}", values["r2_top20"].get<double>()) : "n/a");
        }
      }
      const std::string page = analysis::write_report(dir);  // first: it may throw
      std::cout << "report: " << page << "\n";
    };
  });

  auto report_dir = std::make_shared<std::string>();
  CLI::App* report = app.add_subcommand("report", "Rebuild the HTML report of a finished study");
  report->add_option("study_dir", *report_dir, "The study directory")->required();
  report->callback([report_dir, &action] {
    action = [report_dir] {
      const std::string page = analysis::write_report(*report_dir);  // first: it may throw
      std::cout << "report: " << page << "\n";
    };
  });

  struct ExportArguments {
    std::string path, out, format = "moelab";
    bool latest = false;
  };
  auto export_args = std::make_shared<ExportArguments>();
  CLI::App* exporter = app.add_subcommand(
      "export", "Write a checkpoint's weights (safetensors) and config.json for other tools");
  exporter->add_option("path", export_args->path, "A run directory (its best checkpoint) or a checkpoint")
      ->required();
  exporter->add_option("--out", export_args->out, "Output directory")->required();
  exporter->add_flag("--latest", export_args->latest, "Use the run's newest checkpoint, not its best");
  exporter->add_option("--format", export_args->format,
                       "moelab (moelab's names) or hf (a moe_decoder in the Mixtral/Llama layout "
                       "Hugging Face transformers loads)")
      ->check(CLI::IsMember({"moelab", "hf"}))
      ->capture_default_str();
  exporter->callback([export_args, &action] {
    action = [export_args] {
      if (export_args->format == "hf") {
        const nlohmann::json config =
            run::export_hugging_face(export_args->path, export_args->out, export_args->latest);
        std::cout << fmt::format("exported {} (step {}) as {} to {}/model.safetensors and {}/config.json\n",
                                 config["moelab"]["source_checkpoint"].get<std::string>(),
                                 config["moelab"]["step"].get<int64_t>(),
                                 config["architectures"][0].get<std::string>(), export_args->out,
                                 export_args->out);
        return;
      }
      const nlohmann::json config =
          run::export_checkpoint(export_args->path, export_args->out, export_args->latest);
      std::cout << fmt::format("exported {} tensors of {} (step {}) to {}/model.safetensors and "
                               "{}/config.json\n",
                               config["tensors"].size(), config["source_checkpoint"].get<std::string>(),
                               config["step"].get<int64_t>(), export_args->out, export_args->out);
    };
  });
}

}  // namespace moelab::app
