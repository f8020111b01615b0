// `moelab data simulate-perturbation ...`: writes a gene-expression perturbation data set from real
// molecules (data/perturbation.h), in both layouts, with its ground truth.
#include <fmt/format.h>

#include <iostream>

#include "commands.h"
#include "moelab/data/perturbation.h"

namespace moelab::app {

void register_data_commands(CLI::App& app, Action& action) {
  CLI::App* data = app.add_subcommand("data", "Make data sets");
  data->require_subcommand(1);
  CLI::App* simulate = data->add_subcommand(
      "simulate-perturbation",
      "Write a simulated LINCS-style perturbation data set (csv and gctx layouts) from real "
      "molecules: gene programs switched on by substructures, cell-line strengths, noise; its "
      "ground truth in OUT/truth.json");
  auto options = std::make_shared<data::SimulationOptions>();
  auto out = std::make_shared<std::string>();
  simulate->add_option("--molecules", options->molecules(), "SMILES file (.smi: SMILES [name] per line)")
      ->capture_default_str();
  simulate->add_option("--cell-lines", options->cell_lines(), "Cell lines")->capture_default_str();
  simulate->add_option("--genes", options->genes(), "Genes")->capture_default_str();
  simulate->add_option("--samples", options->samples(), "Signatures")->capture_default_str();
  simulate->add_option("--programs", options->programs(), "Gene programs")->capture_default_str();
  simulate->add_option("--genes-per-program", options->genes_per_program(), "Genes each program moves")
      ->capture_default_str();
  simulate->add_option("--noise", options->noise(), "Measurement noise (standard deviation)")
      ->capture_default_str();
  simulate->add_option("--seed", options->seed(), "Same seed, same data")->capture_default_str();
  simulate->add_option("--out", *out, "Directory to write (OUT/csv, OUT/gctx, OUT/truth.json)")->required();
  simulate->callback([&action, options, out] {
    action = [options, out] {
      const data::PerturbationTable table = data::simulate_perturbation(*options, *out);
      std::cout << fmt::format(
          "{} signatures, {} genes, {} cell lines, {} programs: {}/csv, {}/gctx, {}/truth.json\n"
          "(train on it with data: {{name: perturbation, path: {}/csv}})\n",
          table.size(), table.genes.size(), options->cell_lines(), options->programs(), *out, *out, *out, *out);
    };
  });
}

}  // namespace moelab::app
